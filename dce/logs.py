"""Logs on stderr: JSON, one object per line (STYLE.md field names), or text for a terminal;
and the one line each call writes when it ends (docs/operations.md "Logs").

The per-call line is written where the CDR is built (dce/pump.py), for every call that gets a
CDR, refused ones included. Caller and called numbers are masked to their last 4 digits by
default: GDPR erasure (compliance/erasure.py) rewrites the database, never log files. The
erasure's keyed hash was the other candidate; it links every line of one caller, which is what
erasure has to undo, and costs two HMACs per call, so the last digits it is.
"""

from __future__ import annotations

import logging
import operator
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from store.cdr import Disposition
from switch.record import HangupSide

if TYPE_CHECKING:
    from store.cdr import Cdr
    from switch.record import CallRecord

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message"}
_BASE = len(_STD) - 1  # attributes of every LogRecord ("message" only once formatted)
_PLAIN = (int, float, str, bool, type(None))  # a tuple: isinstance with a union is slower
_PLAIN_TYPES = frozenset(_PLAIN)
# A call line's fields ride on its record under this name too (CallLines): the formatter
# takes them whole when the record holds nothing else, instead of sifting every attribute.
_FIELDS = "_dce_fields"
_START: float = logging._startTime  # type: ignore[attr-defined]  # relativeCreated's origin
_encoder = msgspec.json.Encoder()
# Text values quoted: spaces, quotes, '=', backslashes, controls, anything beyond ASCII.
_QUOTE = re.compile(r'[^!#-<>-\[\]-~]')

CALLS_LOGGER = "dce.calls"  # the per-call lines: filter on it to keep or route them alone


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields of a line (``extra=``), values as JSON can hold them."""
    return {
        key: value if isinstance(value, _PLAIN) else str(value)
        for key, value in record.__dict__.items()
        if key not in _STD and key[0] != "_"
    }


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds; the date and time to the second are made
    once per second (a third of the cost of ``datetime.isoformat`` on every line)."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self.second = second
        # Through whole µs first, as datetime does: 0.123 s is 122.99999 ms as a float.
        ms = min(999, round((created - second) * 1_000_000) // 1000)
        return f"{self.prefix}.{ms:03d}+00:00"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self._clock.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attrs = record.__dict__
        fields = attrs.get(_FIELDS)
        if fields is not None and _only(attrs, fields):
            out.update(fields)  # the same as the loop below would make, at C speed
        else:
            for key, value in attrs.items():
                if key not in _STD and key[0] != "_":
                    out[key] = value if isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(out).decode()
        except (UnicodeEncodeError, msgspec.EncodeError):
            # A peer's bytes that are not UTF-8 (lone surrogates from the parser): the line
            # is still written, those bytes shown as \xNN.
            return _encoder.encode({k: _printable(v) for k, v in out.items()}).decode()


def _only(attrs: dict[str, object], fields: dict[str, object]) -> bool:
    """The record's extra attributes are exactly ``fields`` (values of plain types, none
    replaced since), so copying ``fields`` gives what sifting the attributes would."""
    return (
        len(attrs) == _BASE + len(fields) + 1
        and all(map(operator.is_, map(attrs.get, fields), fields.values()))
        and all(map(_PLAIN_TYPES.__contains__, map(type, fields.values())))
    )


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger: message key=value ...`` for a person reading a terminal. Values with
    a space, a quote, ``=`` or a control character are JSON-quoted, so a line stays one line."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        parts = [self._clock.stamp(record.created), record.levelname, f"{record.name}:",
                 record.getMessage()]
        for key, value in _fields(record).items():
            if value is not None:
                parts.append(f"{key}={_text_value(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _printable_text(line)


def _text_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or _QUOTE.search(text) is not None:
        return _encoder.encode(_printable_text(text)).decode()
    return text


def _printable(value: object) -> object:
    return _printable_text(value) if isinstance(value, str) else value


def _printable_text(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def setup_logging(level: str, fmt: str = "json") -> None:
    """Root logging on stderr at ``level`` (DCE_LOG_LEVEL), as ``fmt`` (DCE_LOG_FORMAT)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # No line shows the thread or process names: skip looking them up for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log is noise at info for an API polled by monitors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aioice logs every ICE state change at info: several lines per WebRTC call.
    logging.getLogger("aioice").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- per-call lines


def mask_number(number: str | None) -> str | None:
    """``***`` and the last 4 characters (``+13125550123`` -> ``***0123``); 6 or fewer
    characters (short codes, extensions) are hidden whole."""
    if number is None:
        return None
    return "***" + number[-4:] if len(number) > 6 else "***"


def usd(micros: int | None) -> str | None:
    """Micro-dollars as a decimal string with six places (what the CDR's NUMERIC holds)."""
    if micros is None:
        return None
    sign, m = ("-", -micros) if micros < 0 else ("", micros)
    return f"{sign}{m // 1_000_000}.{m % 1_000_000:06d}"


# Enum members to their values: a dict lookup, not the enum's descriptor on every line.
_VALUE: dict[object, str | None] = {None: None} | {m: m.value for m in (*Disposition,
                                                                        *HangupSide)}


class CallLines:
    """Writes the line of each ended call on logger ``dce.calls`` at info."""

    def __init__(self, full_numbers: bool = False, logger: logging.Logger | None = None) -> None:
        self.full_numbers = full_numbers
        self.logger = logger or logging.getLogger(CALLS_LOGGER)
        self._template: dict[str, object] | None = None  # see _record

    def ended(self, record: CallRecord, cdr: Cdr) -> None:
        """The call's line, from its CDR (already cleaned: store/cdrtext.py) and the core's
        record (monotonic instants: the setup time)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        answered = cdr.answered_at is not None and record.answered is not None
        until = record.answered if answered and record.answered is not None else record.ended
        caller, called = cdr.caller, cdr.called
        if not self.full_numbers:
            caller, called = mask_number(caller), mask_number(called)
        fields: dict[str, object] = {
            "call_id": cdr.call_id,
            "sip_call_id": cdr.a_call_id,
            "trunk_id": cdr.trunk_id,
            "campaign_id": cdr.campaign_id,
            "caller": caller,
            "called": called,
            "buyer_id": cdr.buyer_id,
            "endpoint": cdr.endpoint,
            "disposition": _VALUE[cdr.disposition],
            "rule": cdr.rule,
            "sip_status": cdr.sip_status,
            "hangup_side": _VALUE[cdr.hangup_side],
            "attempts": cdr.attempts,
            "setup_ms": max(0, int((until - record.received) * 1000)),
            "talk_ms": cdr.duration_ms,
            "billable": cdr.billable,
            "price": usd(cdr.price),
            "payout": usd(cdr.payout),
            "decision_us": cdr.decision_us,
        }
        if logging.getLogRecordFactory() is not logging.LogRecord:
            logger.info("call ended", extra=fields)  # someone's own records: theirs to make
            return
        logger.handle(self._record(fields))

    def _record(self, fields: dict[str, object]) -> logging.LogRecord:
        """The record ``logger.info("call ended", extra=fields)`` makes, without its stack
        walk and path parsing: the line always comes from here. Its attributes are a copy of
        one made once, the clock and the thread or process fields (when logging keeps those)
        made anew, then the fields."""
        template = self._template
        name = self.logger.name
        if template is None or template["name"] != name:
            template = self._template = vars(logging.LogRecord(
                name, logging.INFO, __file__, _LINE, "call ended", (), None, "ended"))
        record = logging.LogRecord.__new__(logging.LogRecord)
        attrs = record.__dict__
        attrs.update(template)
        ct = time.time()
        attrs["created"] = ct
        attrs["msecs"] = int((ct - int(ct)) * 1000) + 0.0
        attrs["relativeCreated"] = (ct - _START) * 1000
        if logging.logThreads:
            attrs["thread"] = threading.get_ident()
            attrs["threadName"] = threading.current_thread().name
        if logging.logMultiprocessing or logging.logProcesses:
            # Rare outside dce run (setup_logging turns both off): LogRecord knows how.
            fresh = logging.LogRecord("", 0, "", 0, "", None, None)
            attrs["processName"] = fresh.processName
            attrs["process"] = fresh.process
        attrs.update(fields)
        attrs[_FIELDS] = fields
        return record


_LINE = CallLines.ended.__code__.co_firstlineno  # where a call line comes from
