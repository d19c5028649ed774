"""DTMF carried in SIP INFO bodies (application/dtmf-relay, application/dtmf).

Phones, JsSIP and SIP.js send a key press as an INFO request; the switch turns it into an
RFC 4733 event toward the buyer when the call's media can (``SendDtmf``).
"""

from __future__ import annotations

DIGITS = "0123456789*#ABCD"  # RFC 4733 §3.2 event codes 0-15, in order


def parse_dtmf_info(content_type: str | None, body: bytes) -> tuple[str, int] | None:
    """A DTMF digit and duration (ms) from a SIP INFO body, or None if it carries none.

    ``application/dtmf-relay`` (``Signal=5``, ``Duration=160``) and ``application/dtmf``
    (just the digit or event code), as JsSIP, SIP.js and most phones send them.
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if ctype == "application/dtmf-relay":
        digit, duration = "", 160
        for line in text.splitlines():
            key, _, value = line.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "signal":
                digit = value
            elif key == "duration" and value.isdigit():
                duration = int(value)
    elif ctype == "application/dtmf":
        digit, duration = text.strip(), 160
        if digit.isdigit() and int(digit) in range(10, 16):
            digit = DIGITS[int(digit)]
    else:
        return None
    digit = digit.upper()
    if len(digit) != 1 or digit not in DIGITS:
        return None
    return digit, max(40, min(duration, 5000))
