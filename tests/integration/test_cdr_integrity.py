"""Odd bytes from a caller cost no CDR: through a real `dce run` into PostgreSQL (issue 11).

Seven answered calls from a hand-written caller (raw SIP over UDP, so the bytes are exactly
what we choose) to a SIPp buyer: five plain ones, one whose Call-ID is not valid UTF-8, one
whose From display name holds a NUL. All seven must have their CDR, the odd Call-ID stored by
the documented escape (docs/cdr.md "Text values") and giving the sent bytes back, and nothing
may be rejected or lost.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from store.cdrtext import restore_text
from tests.integration import dce_process
from tests.integration.db import fetch
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, start_uas
from tests.integration.sipwire import SDP_OFFER, SipMessage, SipSocket
from tests.ports import free_port

pytestmark = pytest.mark.integration


def request(method: str, uri: str, headers: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    """A SIP request whose header values are raw bytes (any byte but CR and LF)."""
    lines = [f"{method} {uri} SIP/2.0".encode()]
    lines += [name.encode() + b": " + value for name, value in headers]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_call(s: SipSocket, target: str, call_id: bytes, display: bytes) -> SipMessage | None:
    """INVITE, ACK, a short hold, BYE; returns the final response to the INVITE."""
    local = f"{s.local[0]}:{s.local[1]}"
    uri = f"sip:{CALLED}@{target}"
    from_ = b'"' + display + f'" <sip:{CALLER}@{local}>;tag={secrets.token_hex(4)}'.encode()
    branch = "z9hG4bK" + secrets.token_hex(8)
    base = [("From", from_), ("Call-ID", call_id), ("Max-Forwards", b"70")]
    s.send(request("INVITE", uri, [
        ("Via", s.via(branch)[1].encode()), *base, ("To", f"<{uri}>".encode()),
        ("CSeq", b"1 INVITE"), ("Contact", f"<sip:{CALLER}@{local}>".encode()),
        ("Content-Type", b"application/sdp")], SDP_OFFER))  # fmt: skip
    final, _ = s.recv_final(10.0)
    if final is None or final.status != 200:
        return final
    to = (final.header("To") or "").encode()
    contact = final.header("Contact") or f"<{uri}>"
    remote = contact[contact.find("<") + 1 : contact.find(">")]
    s.send(request("ACK", remote, [("Via", s.via()[1].encode()), *base, ("To", to),
                                    ("CSeq", b"1 ACK")]))  # fmt: skip
    time.sleep(0.2)
    s.send(request("BYE", remote, [("Via", s.via()[1].encode()), *base, ("To", to),
                                    ("CSeq", b"2 BYE")]))  # fmt: skip
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        msg = s.recv(max(0.01, deadline - time.monotonic()))
        if msg is None or (msg.status and "BYE" in (msg.header("CSeq") or "")):
            break
    return final


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sw(switches: Any, buyer_port: int, sipp: str) -> Switch:
    config = dce_process.one_buyer(buyer_port, CALLED)
    return switches(config, name="integrity")  # type: ignore[no-any-return]


def test_invalid_utf8_call_id_and_nul_display_name_lose_no_cdr(
    sw: Switch, buyer_port: int, workdir: Path
) -> None:
    prefix = f"it-integrity-{secrets.token_hex(4)}"
    calls = [(f"{prefix}-{i}".encode(), b"Good Caller") for i in range(5)]
    odd_id = prefix.encode() + b"-\xff\xfe\xc3(-bad"  # not UTF-8: lone bytes, a cut sequence
    calls.append((odd_id, b"Odd Call-ID"))
    calls.append((f"{prefix}-nul".encode(), b"Bob\x00Evil"))
    buyer = start_uas(workdir, "uas.xml", buyer_port, calls=len(calls), timeout_s=60)
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        finals = [raw_call(s, sw.sip_addr, cid, display) for cid, display in calls]
    assert [f.status if f else None for f in finals] == [200] * 7, sw.tail()
    served = buyer.wait(20)
    assert served.ok, served.describe()
    sw.wait_idle()

    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        rows = fetch(sw.dsn, "SELECT * FROM cdrs WHERE a_call_id LIKE $1", prefix + "%")
        if len(rows) >= 7:
            break
        time.sleep(0.1)
    assert len(rows) == 7, f"{len(rows)} CDRs for 7 calls\n{sw.tail()}"
    assert {r["disposition"] for r in rows} == {"answered"}
    sent = {cid for cid, _ in calls}
    stored = {restore_text(r["a_call_id"]).encode("utf-8", "surrogateescape") for r in rows}
    assert stored == sent
    odd = next(r for r in rows if "bad" in r["a_call_id"])
    assert odd["a_call_id"] == prefix + "-\\xff\\xfe\\xc3(-bad"
    metrics = sw.metrics()
    assert "dce_cdr_rejected_total 0.0" in metrics and "dce_cdr_lost_total 0.0" in metrics
    assert not (Path(str(sw.data_dir)) / "spool" / "rejected.jsonl").exists()
