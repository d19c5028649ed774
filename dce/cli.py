"""The ``dce`` command line (SPEC.md "Install and run")."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TextIO

import msgspec

from config.errors import ConfigError
from config.settings import load_settings, read_config_file

logger = logging.getLogger("dce")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dce", description="Dependable Call Exchange: SIP switch with a pay-per-call exchange."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="start the switch and block until SIGINT/SIGTERM",
        description="Start the whole switch (SIP, HTTP, media, database) in one "
        "process. Settings come from DCE_* environment variables, "
        "which win over the config file.",
    )
    run.add_argument("--config", type=Path, help="TOML file: settings, trunks, campaigns, buyers")

    dnc = sub.add_parser(
        "dnc",
        help="do-not-call lists",
        description="Manage do-not-call lists "
        "kept under DCE_DATA_DIR/dnc; a running switch picks changes up.",
    )
    dnc_sub = dnc.add_subparsers(dest="dnc_command", metavar="COMMAND")
    imp = dnc_sub.add_parser(
        "import",
        help="bulk-import numbers from a CSV or plain-text file",
        description="Import numbers (first column of a CSV, or one per line, any common "
        "formatting) into the list NAME, replacing it unless --merge is given. "
        "Malformed lines are skipped and counted.",
    )
    imp.add_argument("file", type=Path, help="the file to import")
    imp.add_argument(
        "--list",
        required=True,
        dest="list_name",
        help="list name, e.g. federal, state-fl, internal, litigator",
    )
    imp.add_argument("--source", help="where the data came from (default: the file name)")
    imp.add_argument("--merge", action="store_true", help="add to the list instead of replacing")
    imp.add_argument(
        "--loaded-at",
        help="when the data was pulled from its source (ISO 8601, "
        "default now); lists older than 31 days fail closed",
    )
    imp.add_argument("--config", type=Path, help="TOML file (for data_dir)")

    cfg = sub.add_parser(
        "config",
        help="apply a config file's trunks, campaigns and buyers to the database, or export them",
        description="The database holds the trunks, campaigns and buyers: a config file seeds "
        "it at the first start only. These commands go through the running switch's admin API "
        "(DCE_HTTP_LISTEN, DCE_ADMIN_TOKEN or DCE_DATA_DIR/admin_token), or open the database "
        "directly when no switch answers.",
    )
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND")
    apply = cfg_sub.add_parser(
        "apply",
        help="show the diff between FILE and the database, and apply it",
        description="Print what applying FILE's trunks, campaigns and buyers would add, change "
        "(field by field) and, with --prune, remove; then apply it unless --dry-run. Settings "
        "(database, HTTP address, data dir) come from FILE and DCE_* variables, as for dce run. "
        "Secrets are never printed.",
    )
    apply.add_argument("file", type=Path, help="TOML config file")
    apply.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    apply.add_argument(
        "--prune", action="store_true", help="also remove stored objects FILE does not name"
    )
    export = cfg_sub.add_parser(
        "export",
        help="print the stored trunks, campaigns and buyers as TOML",
        description="Print the trunks, campaigns and buyers in the database as a config "
        "file, without secrets (API keys, trunk digest credentials).",
    )
    export.add_argument("--config", type=Path, help="TOML file (for the settings)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        return _run(args.config)
    if args.command == "dnc":
        if args.dnc_command != "import":
            parser.parse_args(["dnc", "--help"])
        return _dnc_import(args)
    if args.command == "config":
        from dce.configsync import apply_command, export_command

        if args.config_command == "apply":
            return apply_command(args.file, dry_run=args.dry_run, prune=args.prune)
        if args.config_command == "export":
            return export_command(args.config)
        parser.parse_args(["config", "--help"])
    return 2  # pragma: no cover


def _dnc_import(args: argparse.Namespace) -> int:
    """``dce dnc import``: stream the file into a list and save it under DCE_DATA_DIR/dnc."""
    from datetime import UTC, datetime

    from compliance.dnc import DncStore
    from compliance.errors import ComplianceError

    try:
        settings = load_settings(read_config_file(args.config) if args.config else {})
    except ConfigError as exc:
        print(f"dce: config error: {exc}", file=sys.stderr)
        return 2
    try:
        loaded_at = datetime.fromisoformat(args.loaded_at) if args.loaded_at else datetime.now(UTC)
    except ValueError:
        print(f"dce: --loaded-at: not an ISO 8601 time: {args.loaded_at!r}", file=sys.stderr)
        return 2
    if loaded_at.tzinfo is None:
        loaded_at = loaded_at.replace(tzinfo=UTC)
    directory = settings.data_dir / "dnc"
    store = DncStore.load(directory) if directory.is_dir() else DncStore()
    bar = _ProgressBar(sys.stderr)
    try:
        report = store.import_file(
            args.list_name,
            args.file,
            source=args.source,
            loaded_at=loaded_at,
            merge=args.merge,
            progress=bar,
        )
        store.save(directory, args.list_name)
    except FileNotFoundError:
        print(f"dce: {args.file}: no such file", file=sys.stderr)
        return 2
    except ComplianceError as exc:
        print(f"dce: {exc}", file=sys.stderr)
        return 2
    bar.done()
    print(
        f"list {args.list_name}: read {report.read}, imported {report.imported}, "
        f"rejected {report.rejected}, duplicates {report.duplicates}, "
        f"now {report.total} numbers (saved in {directory})"
    )
    return 0


class _ProgressBar:
    """A one-line progress bar on a terminal (plain periodic lines when not a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = -1.0

    def __call__(self, done: int, total: int | None, lines: int) -> None:
        frac = done / total if total else 0.0
        if frac - self._last < (0.01 if self.tty else 0.1):
            return
        self._last = frac
        width = 30
        filled = int(width * frac)
        text = f"[{'#' * filled}{'.' * (width - filled)}] {frac:6.1%} {lines:,} lines"
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _run(config_path: Path | None) -> int:
    from dce.logs import setup_logging
    from exchange.models import config_from_file

    try:
        file_values = read_config_file(config_path) if config_path else {}
        settings = load_settings(file_values)
        # Money as strings or integers; a TOML float is refused (exchange/models.py).
        exchange = config_from_file(file_values)
    except ConfigError as exc:
        print(f"dce: config error: {exc}", file=sys.stderr)
        return 2
    except msgspec.ValidationError as exc:
        print(f"dce: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    import uvloop

    try:
        return uvloop.run(_serve(settings, exchange, config_path))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 0


async def _serve(settings: object, exchange: object, config_path: Path | None = None) -> int:
    from dce.server import Switch

    switch = Switch(settings, exchange, config_path)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await switch.start()
    except OSError as exc:
        logger.error("startup failed: %s", exc)
        await switch.stop()
        return 1
    except Exception:
        logger.exception("startup failed")
        await switch.stop()
        return 1
    await stop.wait()
    logger.info("stopping: draining calls and flushing CDRs")
    await switch.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
