"""The ``dce`` command line (SPEC.md "Install and run")."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        return _run(args.config)
    return 2  # pragma: no cover


def _run(config_path: Path | None) -> int:
    from exchange.models import ExchangeConfig
    from switch.logs import setup_logging

    try:
        file_values = read_config_file(config_path) if config_path else {}
        settings = load_settings(file_values)
        exchange = msgspec.convert(
            {k: v for k, v in file_values.items() if k in ("trunks", "campaigns", "buyers")},
            ExchangeConfig,
        )
    except ConfigError as exc:
        print(f"dce: config error: {exc}", file=sys.stderr)
        return 2
    except msgspec.ValidationError as exc:
        print(f"dce: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    import uvloop

    try:
        return uvloop.run(_serve(settings, exchange))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return 0


async def _serve(settings: object, exchange: object) -> int:
    from switch.server import Switch

    switch = Switch(settings, exchange)  # type: ignore[arg-type]
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
