"""DCE, the application: the CLI, the process lifecycle and the glue (docs/architecture.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dce")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
