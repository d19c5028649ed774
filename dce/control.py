"""``dce status``, ``dce calls`` and ``dce hangup``: the running switch, from the command line.

They talk to the switch's HTTP side as ``dce config apply`` does (dce/configsync.py
``SwitchClient``): the address is DCE_HTTP_LISTEN (a wildcard means the loopback), the
admin token DCE_ADMIN_TOKEN, else DCE_DATA_DIR/admin_token, both from the environment or the
``--config`` file. ``status`` reads ``/healthz`` (no token needed); ``calls`` lists
``GET /api/v1/calls/live`` as a table (or JSON); ``hangup`` is
``DELETE /api/v1/calls/live/{id}``.

Exit statuses: 0 done; 1 failed (the switch refused, the call is not live, the switch is
unhealthy for ``status``); 2 bad input; 3 no switch answers (LSB's "program is not running").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

import aiohttp

from dce.configsync import CommandFailed, SwitchClient, load_settings_file, run_command

__all__ = ["calls_command", "hangup_command", "render_table", "status_command"]

NOT_RUNNING = 3
_LIVE = "/api/v1/calls/live"
_TIMEOUT = aiohttp.ClientTimeout(total=30)


def _not_running(switch: SwitchClient) -> CommandFailed:
    return CommandFailed(
        f"no switch answers at {switch.url}: is `dce run` running? (DCE_HTTP_LISTEN, or "
        "--config FILE, says where it listens)",
        NOT_RUNNING,
    )


async def _require(switch: SwitchClient, http: aiohttp.ClientSession) -> None:
    if not await switch.running(http):
        raise _not_running(switch)


def status_command(config: Path | None, out: TextIO | None = None) -> int:
    """``dce status``: what ``/healthz`` says, one fact per line."""
    stream = out or sys.stdout

    async def main() -> int:
        switch = SwitchClient(load_settings_file(config))
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
            answer = await switch.health(http)
        if answer is None:
            raise _not_running(switch)
        code, body = answer
        cdr = body.get("cdr") or {}
        lines = [
            ("switch", f"{switch.url} ({body.get('status', 'unknown')})"),
            ("version", str(body.get("version", "unknown"))),
            ("live calls", str(body.get("live_calls", "unknown"))),
            ("database", str(body.get("database", "unknown"))),
        ]
        if cdr:
            lines.append(("CDRs waiting", f"{cdr.get('in_memory', 0)} in memory, "
                                          f"{cdr.get('spooled', 0)} spooled on disk"))
        lines += [("problem", p) for p in body.get("problems", [])]
        width = max(len(k) for k, _ in lines)
        for key, value in lines:
            print(f"{key + ':':<{width + 1}} {value}", file=stream)
        return 0 if code == 200 else 1

    return run_command(main)


def calls_command(
    config: Path | None,
    *,
    as_json: bool = False,
    filters: dict[str, str | None] | None = None,
    out: TextIO | None = None,
) -> int:
    """``dce calls``: the live calls as a table, oldest first (or the API's JSON)."""
    stream = out or sys.stdout

    async def main() -> int:
        switch = SwitchClient(load_settings_file(config))
        query = {k: v for k, v in (filters or {}).items() if v is not None}
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
            await _require(switch, http)
            raw = await switch.call(
                http, "GET", f"?{urlencode(query)}" if query else "", path=_LIVE
            )
        items: list[dict[str, Any]] = json.loads(raw)["items"]
        if as_json:
            print(json.dumps(items, indent=2), file=stream)
            return 0
        if not items:
            print("no live calls", file=stream)
            return 0
        now = datetime.now(UTC)
        header = ("CALL ID", "STATE", "AGE", "TALK", "TRUNK", "CALLER", "CALLED", "CAMPAIGN",
                  "BUYER", "RTP A>B", "RTP B>A")
        rows = [_row(c, now) for c in items]
        for line in render_table(header, rows):
            print(line, file=stream)
        print(f"{len(items)} live call{'s' if len(items) != 1 else ''}", file=stream)
        return 0

    return run_command(main)


def hangup_command(config: Path | None, call_id: str, out: TextIO | None = None) -> int:
    """``dce hangup CALL_ID``: the operator ends a live call."""
    stream = out or sys.stdout

    async def main() -> int:
        switch = SwitchClient(load_settings_file(config))
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
            await _require(switch, http)
            raw = await switch.call(http, "DELETE", path=f"{_LIVE}/{quote(call_id, safe='')}")
        call = json.loads(raw)
        who = f", buyer {call['buyer_id']}" if call.get("buyer_id") else ""
        talk = (f", talked {_duration(call.get('duration_ms', 0) / 1000)}"
                if call.get("state") == "answered" else "")
        print(f"hung up {call['call_id']} ({call.get('state')}{talk}{who}); its CDR says "
              "hangup_side operator", file=stream)
        return 0

    return run_command(main)


def _row(call: dict[str, Any], now: datetime) -> list[str]:
    received = datetime.fromisoformat(str(call["received_at"]).replace("Z", "+00:00"))
    answered = call.get("state") == "answered"

    def count(key: str) -> str:
        value = call.get(key)
        return "-" if value is None else str(value)

    return [
        str(call["call_id"]),
        str(call.get("state", "")),
        _duration((now - received).total_seconds()),
        _duration(call.get("duration_ms", 0) / 1000) if answered else "-",
        call.get("trunk_id") or "-",
        str(call.get("caller", "")),
        str(call.get("called", "")),
        call.get("campaign_id") or "-",
        call.get("buyer_id") or "-",
        count("packets_a_to_b"),
        count("packets_b_to_a"),
    ]


def _duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h01m``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header first. Text a peer chose (numbers,
    ids) is printed with control characters escaped so that it cannot move the cursor."""
    table = [list(header), *[[_printable(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in table]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
