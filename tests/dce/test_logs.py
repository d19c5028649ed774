"""dce/logs.py: one JSON object per line, whatever a field holds."""

from __future__ import annotations

import json
import logging

import pytest

from config.errors import ConfigError
from config.settings import load_settings
from dce.logs import JsonFormatter, TextFormatter, setup_logging


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
