"""Configuration errors: each names the offending key so the user can fix it."""


class ConfigError(Exception):
    """A setting or config-file entry is invalid."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
