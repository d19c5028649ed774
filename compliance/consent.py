"""Consent records and the "valid unrevoked consent naming this campaign" test (domain.md §4.3).

Prior express written consent is the caller's burden to prove (47 CFR 64.1200(a)(2), (f)(9)), so
a record keeps what proves it: the consumer's number, the seller (trunk) that collected it, the
campaign it names, the disclosure text or version shown, the page it was given on, the
third-party certificate (TrustedForm certificate URL/id, Jornaya LeadiD token), when it was
given and when it was revoked. The FCC one-to-one rule was vacated in January 2025, but buyers
still require the consent to name them, so the test here is per campaign.

The store is an in-memory index by caller (E.164). The gate's question is one dict lookup and a
scan of that caller's few records, allocating nothing. Records are kept after revocation: they
are evidence (4-year statute of limitations) until a GDPR erasure replaces the number.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Annotated

import msgspec

from compliance.errors import ConsentInvalid
from compliance.numbers import normalize

__all__ = ["ConsentRecord", "ConsentStore"]

_Text = Annotated[str, msgspec.Meta(max_length=10_000)]
_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ConsentRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One consent given by a consumer. ``caller`` is E.164 (or a keyed hash after erasure).

    ``trunk_id`` is the seller that collected the consent; ``campaign_id`` the campaign it
    names. ``revoked_at`` None means not revoked.
    """

    id: _Short
    caller: _Short
    campaign_id: _Short
    trunk_id: _Short | None = None
    disclosure: _Text | None = None
    source_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    certificate_id: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    granted_at: datetime
    revoked_at: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        """Given by ``now`` and not revoked by ``now``."""
        return self.granted_at <= now and (self.revoked_at is None or self.revoked_at > now)


class ConsentStore:
    """Consent records indexed by caller."""

    def __init__(self, records: Iterable[ConsentRecord] = ()) -> None:
        self._by_caller: dict[str, list[ConsentRecord]] = {}
        self._by_id: dict[str, ConsentRecord] = {}
        for r in records:
            self.add(r)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ConsentRecord]:
        return iter(list(self._by_id.values()))

    def add(self, record: ConsentRecord) -> ConsentRecord:
        """Store (or replace, by ``id``) a record; the caller is normalised to E.164.

        Raises:
            ConsentInvalid: the caller is not a phone number, or it was revoked before granted.
        """
        caller = normalize(record.caller)
        if caller is None:
            raise ConsentInvalid(f"consent {record.id!r}: caller {record.caller!r} is not a number")
        if record.granted_at.tzinfo is None or (
            record.revoked_at is not None and record.revoked_at.tzinfo is None
        ):
            raise ConsentInvalid(f"consent {record.id!r}: times need a time zone")
        if record.revoked_at is not None and record.revoked_at < record.granted_at:
            raise ConsentInvalid(f"consent {record.id!r}: revoked before it was granted")
        if caller != record.caller:
            record = msgspec.structs.replace(record, caller=caller)
        self._insert(record)
        return record

    def _insert(self, record: ConsentRecord) -> None:
        old = self._by_id.get(record.id)
        if old is not None:
            self._unindex(old)
        self._by_id[record.id] = record
        self._by_caller.setdefault(record.caller, []).append(record)

    def _unindex(self, record: ConsentRecord) -> None:
        lst = self._by_caller.get(record.caller)
        if lst is None:
            return
        lst[:] = [r for r in lst if r.id != record.id]
        if not lst:
            del self._by_caller[record.caller]

    def get(self, record_id: str) -> ConsentRecord | None:
        """The record with this id, or None."""
        return self._by_id.get(record_id)

    def for_caller(self, e164: str) -> list[ConsentRecord]:
        """All records of one caller (revoked ones too)."""
        return list(self._by_caller.get(e164, ()))

    def revoke(self, record_id: str, at: datetime) -> ConsentRecord | None:
        """Mark a record revoked at ``at`` (kept as evidence); None if there is no such record.

        A record already revoked keeps its earlier revocation time.
        """
        old = self._by_id.get(record_id)
        if old is None:
            return None
        if old.revoked_at is not None and old.revoked_at <= at:
            return old
        new = msgspec.structs.replace(old, revoked_at=max(at, old.granted_at))
        self._insert(new)
        return new

    def revoke_caller(self, e164: str, at: datetime, campaign_id: str | None = None) -> int:
        """Revoke every live consent of a caller (or only those naming ``campaign_id``).

        A consumer's "stop calling me" revokes consent given to that seller; returns how many
        records changed.
        """
        n = 0
        for r in self.for_caller(e164):
            if r.revoked_at is None and campaign_id in (None, r.campaign_id):
                self.revoke(r.id, at)
                n += 1
        return n

    def has_valid(self, e164: str, campaign_id: str, now: datetime) -> bool:
        """Does the caller hold a consent naming ``campaign_id`` that is valid at ``now``?"""
        records = self._by_caller.get(e164)
        if records is None:
            return False
        # A plain loop, not any(genexpr): no generator object on the per-call path.
        for r in records:  # noqa: SIM110
            if r.campaign_id == campaign_id and r.valid_at(now):
                return True
        return False

    def replace_caller(self, e164: str, replacement: str) -> list[ConsentRecord]:
        """GDPR erasure: rewrite this caller's records under ``replacement`` (a keyed hash).

        Returns the rewritten records so that the store behind the API can persist them.
        """
        out: list[ConsentRecord] = []
        for r in self.for_caller(e164):
            new = msgspec.structs.replace(r, caller=replacement)
            self._unindex(r)
            self._by_id[new.id] = new
            self._by_caller.setdefault(replacement, []).append(new)
            out.append(new)
        return out
