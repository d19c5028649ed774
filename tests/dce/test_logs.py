"""dce/logs.py: one JSON object per line, whatever a field holds."""

from __future__ import annotations

import json
import logging

from dce.logs import JsonFormatter


def test_bytes_that_are_not_utf8_still_make_a_line() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "bad call", None, None)
    record.sip_call_id = b"ab\xff\x00".decode("utf-8", "surrogateescape")
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["msg"] == "bad call" and doc["sip_call_id"] == "ab\\xff\x00"
