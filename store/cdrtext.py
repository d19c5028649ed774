"""The text rule of CDR values: whatever bytes a peer sent, a CDR's text can be stored.

Theory of operation
-------------------
SIP headers reach the CDR as Python strings that may hold anything: switch/message.py decodes
a header block that is not valid UTF-8 with ``surrogateescape`` (each invalid byte 0xNN
becomes the lone surrogate U+DCNN), a Request-URI user's ``%00`` unescapes to NUL, and any
header may carry control characters. PostgreSQL ``text`` takes neither NUL nor surrogates,
msgspec cannot encode surrogates, and control characters make a row unreadable on a
terminal. The writer (store/writer.py) therefore passes every CDR through
:func:`clean_cdr` when it is submitted, before it is queued, spooled or copied, so no path
(COPY, the per-row retry, the spool, the replay) can fail because of what a peer sent.

The rule, for every text column (and every string, key or value, in ``auction`` and every
element of ``compliance``):

* ``\\`` (a backslash) becomes ``\\\\``, so that every other backslash is an escape;
* a byte that was not valid UTF-8 (U+DC80-U+DCFF from ``surrogateescape``) becomes
  ``\\xNN`` with NN its value, 80-ff;
* a C0 control character or DEL (U+0000-U+001F, U+007F) becomes ``\\xNN`` with NN 00-1f, 7f;
* a C1 control character (U+0080-U+009F) and any other lone surrogate become ``\\uNNNN``;
* everything else is kept as it is (valid UTF-8 text, U+FFFD included);
* a value longer than its column's limit (:data:`TEXT_LIMITS`, in characters, after
  escaping) keeps its head, cut at an escape boundary, and ends with the marker
  ``\\[truncated N]``: the last N characters of the value were dropped.

Escaping is lossless and unambiguous (:func:`restore_text` inverts it for a value that was
not truncated), and the result is valid UTF-8 without NUL or control characters. Values that
need nothing, which is nearly all of them, are returned as the same object. The rule is
documented for operators in docs/cdr.md "Text values".
"""

from __future__ import annotations

import contextlib
import operator
import re
from typing import Any

import msgspec

from store.cdr import Cdr

__all__ = [
    "AUCTION_TEXT_LIMIT",
    "COMPLIANCE_ITEM_LIMIT",
    "COMPLIANCE_MAX_ITEMS",
    "TEXT_LIMITS",
    "clean_cdr",
    "clean_text",
    "plain",
    "restore_text",
]

# Characters per text column, after escaping. Ids from the config are at most 64 characters
# and endpoint URIs 512 (exchange/models.py), so the limits never cut a configured value;
# what a peer sends (Call-ID, caller, called) is cut where no real value reaches.
TEXT_LIMITS: dict[str, int] = {
    "call_id": 128,
    "a_call_id": 512,
    "b_call_id": 512,
    "trunk_id": 128,
    "source": 32,
    "caller": 256,
    "called": 256,
    "caller_state": 32,
    "campaign_id": 128,
    "buyer_id": 128,
    "endpoint": 1024,
    "attestation": 32,
    "rule": 128,
}
COMPLIANCE_ITEM_LIMIT = 128
COMPLIANCE_MAX_ITEMS = 64  # the gate writes 8; past this the list ends with a marker item
AUCTION_TEXT_LIMIT = 512  # every string in the auction record, keys included

# What needs escaping: a backslash, C0, DEL, C1, any surrogate.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same without the backslash: for text whose backslashes are already escapes.
_UNSAFE_ESCAPED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# One escape of the output, or a backslash that starts none (only a truncation marker).
_TOKEN = re.compile(r"\\(?:\\|x[0-9a-f]{2}|u[0-9a-f]{4}|\[truncated \d+\])")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    o = ord(c)
    if o < 0x80:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:
        return f"\\x{o - 0xDC00:02x}"  # the byte surrogateescape stood in for
    return f"\\u{o:04x}"


def clean_text(value: str, limit: int, *, escaped: bool = False) -> str:
    """``value`` made storable by the rule above, at most ``limit`` characters.

    ``escaped``: the value was cleaned before (a spool line), so its backslashes are
    escapes already and only what is still unsafe is escaped; nothing is escaped twice.
    """
    pattern = _UNSAFE_ESCAPED if escaped else _UNSAFE
    if len(value) <= limit:
        if pattern.search(value) is None:
            return value
        out = pattern.sub(_escape, value)
        if len(out) <= limit:
            return out
    return _truncate(value, pattern, limit)


def _truncate(value: str, pattern: re.Pattern[str], limit: int) -> str:
    """The escaped head of ``value``, cut between escapes, then the marker: at most ``limit``
    characters, and work in proportion to ``limit``, not to the length of ``value``."""
    # N <= len(value), so a marker sized for len(value) always fits.
    keep = max(0, limit - len(f"\\[truncated {len(value)}]"))
    window = value[:keep]  # every character escapes to one or more: no more can fit
    pieces: list[str] = []
    n = 0  # characters written
    pos = 0  # characters of ``value`` consumed
    for m in pattern.finditer(window):
        literal = window[pos : m.start()]
        if n + len(literal) >= keep:
            pieces.append(literal[: keep - n])
            pos += keep - n
            break
        pieces.append(literal)
        n += len(literal)
        pos = m.start()
        esc = _escape(m)
        if n + len(esc) > keep:
            break  # an escape is never cut in half
        pieces.append(esc)
        n += len(esc)
        pos = m.end()
    else:
        take = min(len(window) - pos, keep - n)
        pieces.append(window[pos : pos + take])
        pos += take
    return f"{''.join(pieces)}\\[truncated {len(value) - pos}]"


def restore_text(value: str) -> str:
    """The original string of a cleaned value that was not truncated (the inverse of
    :func:`clean_text`). Encode it with ``surrogateescape`` to get the peer's bytes back."""
    if "\\" not in value:
        return value

    def one(m: re.Match[str]) -> str:
        esc = m.group()
        if esc == "\\\\":
            return "\\"
        if esc[1] == "x":
            n = int(esc[2:], 16)
            return chr(n + 0xDC00) if n >= 0x80 else chr(n)
        if esc[1] == "u":
            return chr(int(esc[2:], 16))
        raise ValueError(f"truncated value cannot be restored: {value[:40]!r}")

    return _TOKEN.sub(one, value)


# In msgspec's JSON of a value, what shows that some string in it needs cleaning: any escape
# (a backslash, quote or control character), DEL, a C1 character (UTF-8 C2 80-9F), or a run
# of more than AUCTION_TEXT_LIMIT bytes between quotes (a long string, or long non-string
# data: then the slow walk decides). A lone surrogate makes the encoder raise instead.
_JSON_SUSPECT = re.compile(rb'[\\\x7f]|\xc2[\x80-\x9f]|"[^"]{%d,}"' % (AUCTION_TEXT_LIMIT + 1))
_JSON_LONG = re.compile(rb'"[^"]{%d,}"' % (AUCTION_TEXT_LIMIT + 1))
_JSON = msgspec.json.Encoder()


def _json_is_clean(value: Any) -> bool:
    """A fast check of a whole JSON-shaped value (one C-speed encode, then byte tests)."""
    try:
        data = _JSON.encode(value)
    except Exception:
        return False
    if data.isascii() and b"\\" not in data and b"\x7f" not in data:
        # The usual record: no escape, no DEL, no C1 (not ASCII). Only a long run is left to
        # rule out, and byte tests are far cheaper than the regex's scan of every position.
        return len(data) <= AUCTION_TEXT_LIMIT or _JSON_LONG.search(data) is None
    return _JSON_SUSPECT.search(data) is None


def _clean_json(value: Any, escaped: bool) -> Any:
    """A JSON-shaped value with every string (keys too) cleaned; the same object if clean."""
    if isinstance(value, str):
        return clean_text(value, AUCTION_TEXT_LIMIT, escaped=escaped)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        changed = False
        for k, v in value.items():
            ck = _clean_json(k, escaped) if isinstance(k, str) else k
            cv = _clean_json(v, escaped)
            changed = changed or ck is not k or cv is not v
            if ck in out:  # two keys that differed only in what the limit cut
                ck = f"{ck}#{len(out)}"
                changed = True
            out[ck] = cv
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [_clean_json(v, escaped) for v in value]
        if any(a is not b for a, b in zip(items, value, strict=True)):
            return items
        return value
    return value


def _clean_list(items: list[Any], escaped: bool) -> list[Any]:
    out = [
        clean_text(v, COMPLIANCE_ITEM_LIMIT, escaped=escaped) if isinstance(v, str) else v
        for v in items
    ]
    if len(out) > COMPLIANCE_MAX_ITEMS:
        keep = COMPLIANCE_MAX_ITEMS - 1
        out = [*out[:keep], f"\\[truncated {len(out) - keep}]"]
    if len(out) == len(items) and all(a is b for a, b in zip(out, items, strict=True)):
        return items
    return out


_TEXT_VALUES = operator.attrgetter(*TEXT_LIMITS)
_LIMITS = tuple(TEXT_LIMITS.values())


def plain(texts: list[str]) -> bool:
    """Every string printable ASCII without a backslash: none needs escaping, whatever its
    mode (C-speed checks over one joined string; False also for a value that is not a
    string). Nearly every value is such, so callers test this before any walk."""
    try:
        joined = "".join(texts)
    except TypeError:
        return False
    return joined.isascii() and joined.isprintable() and "\\" not in joined


def _needs_nothing(cdr: Cdr) -> bool:
    """True when :func:`clean_cdr` would return ``cdr`` unchanged without walking it: the
    usual CDR (plain ASCII values within their limits, a clean auction record)."""
    texts = [v if v is not None else "" for v in _TEXT_VALUES(cdr)]
    if not plain(texts) or not all(map(operator.le, map(len, texts), _LIMITS)):
        return False
    compliance = cdr.compliance
    if compliance and (not isinstance(compliance, list) or len(compliance) > COMPLIANCE_MAX_ITEMS
                       or not plain(compliance)
                       or max(map(len, compliance)) > COMPLIANCE_ITEM_LIMIT):
        return False
    return cdr.auction is None or _json_is_clean(cdr.auction)


def clean_cdr(cdr: Cdr, *, escaped: bool = False) -> Cdr:
    """``cdr`` with every text value made storable (see the module docstring).

    Returns ``cdr`` itself when nothing needed a change, else a copy (the caller's record is
    never modified). Values of the wrong type are left alone: they are our bug, not a
    peer's bytes, and the writer rejects such a row on its own. ``escaped``: the CDR was
    cleaned before (read back from the spool); see :func:`clean_text`.
    """
    with contextlib.suppress(Exception):  # a value of an odd type: the walk below decides
        if _needs_nothing(cdr):
            return cdr
    changes: dict[str, Any] = {}
    for name, limit in TEXT_LIMITS.items():
        value = getattr(cdr, name)
        if isinstance(value, str):
            new = clean_text(value, limit, escaped=escaped)
            if new is not value:
                changes[name] = new
    if isinstance(cdr.compliance, list) and cdr.compliance:
        compliance = _clean_list(cdr.compliance, escaped)
        if compliance is not cdr.compliance:
            changes["compliance"] = compliance
    if cdr.auction is not None and not _json_is_clean(cdr.auction):
        auction = _clean_json(cdr.auction, escaped)
        if auction is not cdr.auction:
            changes["auction"] = auction
    return msgspec.structs.replace(cdr, **changes) if changes else cdr
