"""dce/logs.py: one JSON object per line, whatever a field holds."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from config.errors import ConfigError
from config.settings import load_settings
from dce.logs import CallLines, JsonFormatter, TextFormatter, setup_logging
from store.cdr import Cdr, Disposition
from switch.record import CallRecord, HangupSide, Outcome


def test_bytes_that_are_not_utf8_still_make_a_line() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "bad call", None, None)
    record.sip_call_id = b"ab\xff\x00".decode("utf-8", "surrogateescape")
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["msg"] == "bad call" and doc["sip_call_id"] == "ab\\xff\x00"


def _record(msg: str = "call ended", **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("dce.calls", logging.INFO, "f", 1, msg, None, None)
    record.created = 1_795_446_000.25  # 2026-11-23T15:00:00.250Z
    for key, value in fields.items():
        setattr(record, key, value)
    return record


def test_json_line_has_the_time_to_the_millisecond() -> None:
    doc = json.loads(JsonFormatter().format(_record(call_id="c1", talk_ms=0, rule=None)))
    assert doc == {"ts": "2026-11-23T15:00:00.250+00:00", "level": "info", "logger": "dce.calls",
                   "msg": "call ended", "call_id": "c1", "talk_ms": 0, "rule": None}


def test_text_line_for_a_terminal() -> None:
    line = TextFormatter().format(_record(
        call_id="c1", trunk_id="t1", rule=None, billable=True, talk_ms=45000,
        endpoint="sip:buyer@10.0.0.9;transport=tcp", reason="buyer said\nno"))
    assert line == (
        '2026-11-23T15:00:00.250+00:00 INFO dce.calls: call ended call_id=c1 trunk_id=t1 '
        'billable=true talk_ms=45000 endpoint="sip:buyer@10.0.0.9;transport=tcp" '
        'reason="buyer said\\nno"')


def test_text_line_with_bytes_that_are_not_utf8() -> None:
    bad = b"ab\xff".decode("utf-8", "surrogateescape")
    line = TextFormatter().format(_record(sip_call_id=bad))
    assert line.endswith('sip_call_id="ab\\\\xff"') and "\n" not in line


@pytest.mark.parametrize(("fmt", "formatter"), [("json", JsonFormatter), ("text", TextFormatter)])
def test_setup_logging_picks_the_format(fmt: str, formatter: type, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    for name in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    setup_logging("warning", fmt)
    (handler,) = root.handlers
    assert isinstance(handler.formatter, formatter) and root.level == logging.WARNING


def test_settings_for_the_format_and_numbers() -> None:
    s = load_settings({}, {"DCE_LOG_FORMAT": "TEXT", "DCE_LOG_NUMBERS": "full"})
    assert (s.log_format, s.log_numbers) == ("text", "full")
    assert (load_settings({}, {}).log_format, load_settings({}, {}).log_numbers) == (
        "json", "masked")
    for env, key in (({"DCE_LOG_FORMAT": "xml"}, "log_format"),
                     ({"DCE_LOG_NUMBERS": "hashed"}, "log_numbers")):
        with pytest.raises(ConfigError) as info:
            load_settings({}, env)
        assert info.value.key == key


def test_call_line_honours_filters_that_change_or_add_fields() -> None:
    """The call line's quick JSON path must give what the attributes say, filters included."""
    t0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    record = CallRecord(
        call_id="c1", a_call_id="a1@x", b_call_id=None, trunk_id="t1", source="sip",
        caller="+13125550123", called="+18005550100", received=100.0, answered=None,
        confirmed=False, ended=100.25, duration_ms=0, outcome=Outcome.REJECTED, sip_status=403,
        hangup_side=HangupSide.SYSTEM, target_index=None, endpoint=None, attempts=0, rule="dnc",
    )
    cdr = Cdr(call_id="c1", a_call_id="a1@x", trunk_id="t1", caller="+13125550123",
              called="+18005550100", received_at=t0, ended_at=t0,
              disposition=Disposition.REJECTED_COMPLIANCE, sip_status=403,
              hangup_side=HangupSide.SYSTEM, rule="dnc")

    class Redact(logging.Filter):
        def filter(self, rec: logging.LogRecord) -> bool:
            rec.trunk_id = "(hidden)"
            rec.site = "east"
            return True

    out = io.StringIO()
    logger = logging.getLogger("test.logs.filtered")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    lines = CallLines(logger=logger)
    lines.ended(record, cdr)
    handler.addFilter(Redact())
    lines.ended(record, cdr)
    plain, filtered = (json.loads(line) for line in out.getvalue().splitlines())
    assert (plain["trunk_id"], plain["disposition"], plain["setup_ms"]) == (
        "t1", "rejected_compliance", 250)
    assert "site" not in plain
    assert (filtered["trunk_id"], filtered["site"]) == ("(hidden)", "east")
    assert {k: v for k, v in filtered.items() if k not in ("ts", "trunk_id", "site")} == {
        k: v for k, v in plain.items() if k not in ("ts", "trunk_id")}
