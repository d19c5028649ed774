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
from config.settings import Settings, load_settings, read_config_file

logger = logging.getLogger("dce")


def _parser() -> argparse.ArgumentParser:
    from dce import __version__

    p = argparse.ArgumentParser(
        prog="dce", description="Dependable Call Exchange: SIP switch with a pay-per-call exchange."
    )
    p.add_argument("--version", action="version", version=f"dce {__version__}")
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
        description="Manage do-not-call lists, kept in the database: every switch "
        "instance on it uses a change within a second.",
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

    # The running switch, through its HTTP side (dce/control.py).
    reach = ("Talks to the running switch at DCE_HTTP_LISTEN with DCE_ADMIN_TOKEN or "
             "DCE_DATA_DIR/admin_token (from the environment or --config FILE). Exit status 3 "
             "when no switch answers.")
    status = sub.add_parser("status", help="is the switch up, how many live calls",
                            description="What the running switch's /healthz says. Exit status "
                            "0 healthy, 1 unhealthy, 3 not running. " + reach)
    status.add_argument("--config", type=Path, help="TOML file (for the settings)")
    calls = sub.add_parser("calls", help="list the live calls",
                           description="The calls in progress, oldest first: state, age, talk "
                           "time, trunk, numbers, campaign, buyer, RTP packets each way. "
                           + reach)
    calls.add_argument("--config", type=Path, help="TOML file (for the settings)")
    calls.add_argument("--json", action="store_true", help="print the API's JSON instead")
    calls.add_argument("--trunk", help="only this trunk's calls")
    calls.add_argument("--campaign", help="only this campaign's calls")
    calls.add_argument("--buyer", help="only this buyer's calls")
    hangup = sub.add_parser("hangup", help="hang up a live call",
                            description="End a call in progress: BYE to both legs (before the "
                            "answer the caller gets 480 operator_hangup). Its CDR says "
                            "hangup_side operator. " + reach)
    hangup.add_argument("call_id", metavar="CALL_ID", help="the call id `dce calls` shows")
    hangup.add_argument("--config", type=Path, help="TOML file (for the settings)")
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
    if args.command in ("status", "calls", "hangup"):
        from dce import control

        if args.command == "status":
            return control.status_command(args.config)
        if args.command == "calls":
            filters = {"trunk_id": args.trunk, "campaign_id": args.campaign,
                       "buyer_id": args.buyer}
            return control.calls_command(args.config, as_json=args.json, filters=filters)
        return control.hangup_command(args.config, args.call_id)
    return 2  # pragma: no cover


def _dnc_import(args: argparse.Namespace) -> int:
    """``dce dnc import``: stream the file into a list stored in the database (dce/dncimport.py)."""
    from datetime import UTC, datetime

    from compliance.errors import ComplianceError
    from dce.configsync import CommandFailed
    from dce.dncimport import import_list

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
    bar = _ProgressBar(sys.stderr)
    try:
        report, where = asyncio.run(import_list(
            settings, args.file, name=args.list_name, source=args.source, loaded_at=loaded_at,
            merge=args.merge, progress=bar,
        ))  # fmt: skip
    except CommandFailed as exc:
        bar.done()
        print(f"dce: {exc}", file=sys.stderr)
        return exc.status
    except ComplianceError as exc:
        bar.done()
        print(f"dce: {exc}", file=sys.stderr)
        return 2
    bar.done()
    print(
        f"list {args.list_name}: read {report.read}, imported {report.imported}, "
        f"rejected {report.rejected}, duplicates {report.duplicates}, "
        f"now {report.total} numbers ({where})"
    )
    _dnc_users(settings, args.list_name)
    return 0


def _dnc_users(settings: Settings, name: str) -> None:
    """Say which campaigns use the list, or warn that none does: such a list blocks no call
    (a misspelt name, or a campaign still to be pointed at it). The stored campaigns are read
    as ``dce config export`` reads them: through the running switch, else the database."""
    from api.dnc import unused_warning
    from dce.configsync import CommandFailed, stored_config

    try:
        campaigns = asyncio.run(stored_config(settings)).campaigns
    except CommandFailed as exc:
        print(f"dce: note: could not check which campaigns use {name!r}: {exc}",
              file=sys.stderr)
        return
    users = sorted(c.id for c in campaigns if name in c.compliance.dnc_lists)
    if users:
        print(f"used by campaign{'s' if len(users) > 1 else ''} {', '.join(users)}")
    else:
        print(f"dce: warning: {unused_warning(name)}", file=sys.stderr)


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
    setup_logging(settings.log_level, settings.log_format)
    import uvloop

    try:
        return uvloop.run(_serve(settings, exchange, config_path))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 0


async def _serve(settings: object, exchange: object, config_path: Path | None = None) -> int:
    from dce.server import Switch
    from dce.sync import SecretMismatch

    switch = Switch(settings, exchange, config_path)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await switch.start()
    except (OSError, SecretMismatch) as exc:  # the message says what to fix
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
