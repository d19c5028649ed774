"""switch/dtmf.py: the DTMF digit in a SIP INFO body."""

from __future__ import annotations

import pytest

from switch.dtmf import parse_dtmf_info


@pytest.mark.parametrize(
    ("ctype", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
        ("application/dtmf-relay", b"Signal= #\r\nDuration= 250\r\n", ("#", 250)),
        ("Application/DTMF-Relay; charset=x", b"Signal=*\r\n", ("*", 160)),
        ("application/dtmf", b"11", ("#", 160)),
        ("application/dtmf", b"7", ("7", 160)),
        ("application/dtmf-relay", b"Signal=X\r\n", None),
        ("application/dtmf-relay", b"Duration=100\r\n", None),
        ("application/sdp", b"v=0", None),
        (None, b"Signal=5", None),
    ],
)
def test_parse_dtmf_info(ctype: str | None, body: bytes, expected: tuple[str, int] | None) -> None:
    assert parse_dtmf_info(ctype, body) == expected
