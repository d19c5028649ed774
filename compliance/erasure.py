"""GDPR erasure of a caller and the hashed suppression set the gate consults (domain.md §4.4).

Art. 17 lets a consumer have their number erased; Art. 17(3)(b)/(e) lets us keep what we need
to honour their opt-out and defend claims. So an erasure replaces the number everywhere with a
keyed hash (HMAC-SHA256 with a secret that never leaves the server, so the hash cannot be
reversed by hashing all 10^10 NANP numbers) and keeps a suppression entry under that hash that
says where the number asked to stay blocked: on named DNC lists, or on every call (``"*"``).

The gate computes the hash only when the suppression set is not empty, so the common case costs
nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import msgspec

from compliance.consent import ConsentStore
from compliance.dnc import DncStore

__all__ = ["ALL", "ErasureReport", "Suppression", "caller_hash", "erase_caller"]

ALL = "*"  # suppression scope: blocked on every call, whatever the campaign's lists
_PREFIX = "hmac:"


def caller_hash(e164: str, secret: bytes) -> str:
    """``hmac:`` + hex HMAC-SHA256 of the E.164 number under ``secret`` (what replaces it)."""
    return _PREFIX + hmac.new(secret, e164.encode(), hashlib.sha256).hexdigest()


class Suppression:
    """Hashed numbers that stay blocked after erasure, each with the DNC lists it was on."""

    def __init__(self, secret: bytes, entries: Mapping[str, Iterable[str]] | None = None) -> None:
        if len(secret) < 16:
            raise ValueError("the erasure secret must be at least 16 bytes")
        self._secret = secret
        self._entries: dict[str, frozenset[str]] = {
            h: frozenset(scope) for h, scope in (entries or {}).items()
        }

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def hash(self, e164: str) -> str:
        """This set's keyed hash of a number."""
        return caller_hash(e164, self._secret)

    def add(self, e164: str, scope: Iterable[str]) -> str:
        """Keep ``e164`` blocked on the lists in ``scope`` (``ALL`` for every call); its hash."""
        h = self.hash(e164)
        self._entries[h] = self._entries.get(h, frozenset()) | frozenset(scope)
        return h

    def scope(self, e164: str) -> frozenset[str] | None:
        """The lists this number stays blocked on, or None if it was never erased."""
        if not self._entries:
            return None
        return self._entries.get(self.hash(e164))

    def entries(self) -> dict[str, list[str]]:
        """For persistence: hash -> sorted list names."""
        return {h: sorted(s) for h, s in self._entries.items()}


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``erase_caller`` did: the replacement hash, the DNC lists the number was removed
    from (its suppression scope) and the consent records rewritten."""

    hash: str
    dnc_lists: list[str]
    consent_records: int
    suppressed: list[str]


def erase_caller(
    e164: str,
    *,
    suppression: Suppression,
    dnc: DncStore,
    consent: ConsentStore,
    block_all: bool = False,
) -> ErasureReport:
    """Erase a caller from the in-memory compliance data, keeping a hashed suppression entry.

    The number is removed from every DNC list that holds it and suppressed on those lists (so
    it stays blocked where it asked to be, Art. 17(3)(b)); ``block_all`` suppresses it on every
    call. Consent records are rewritten under the hash. CDRs and auction records live in the
    database and are the caller's job, using ``ErasureReport.hash`` as the replacement; so is
    saving the changed DNC lists and the suppression entries (``Suppression.entries``).
    """
    lists = dnc.lookup(e164)
    for name in lists:
        dnc.remove_numbers(name, [e164])
    scope = [*lists, ALL] if block_all else list(lists)
    h = suppression.add(e164, scope) if scope else suppression.hash(e164)
    rewritten = consent.replace_caller(e164, h)
    return ErasureReport(
        hash=h,
        dnc_lists=sorted(lists),
        consent_records=len(rewritten),
        suppressed=sorted(scope),
    )
