"""Structured JSON logs on stderr, one object per line (STYLE.md field names)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message"}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, int | float | str | bool | None) else str(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(out).decode()
        except (UnicodeEncodeError, msgspec.EncodeError):
            # A peer's bytes that are not UTF-8 (lone surrogates from the parser): the line
            # is still written, those bytes shown as \xNN.
            return _encoder.encode({k: _printable(v) for k, v in out.items()}).decode()


def _printable(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is noise at info for an API polled by monitors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aioice logs every ICE state change at info: several lines per WebRTC call.
    logging.getLogger("aioice").setLevel(logging.WARNING)
