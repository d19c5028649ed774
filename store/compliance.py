"""The compliance tables: consent records, erasure suppressions, and the GDPR erasure itself.

Consent records are msgspec-encoded JSONB documents with ``caller`` and ``campaign_id`` as
columns to look them up by. ``suppressions`` maps an erased number's keyed hash to the DNC
lists it stays blocked on (compliance/erasure.py's ``Suppression``). An erasure rewrites the
number in ``cdrs`` and ``consents`` and records the suppression in one transaction.
``ComplianceTables`` is reached as ``Store.compliance``.

Both tables carry the version of the write that last changed each row (migration 0005):
``consents_since`` and ``suppressions_since`` give another switch instance the rows newer
than what it holds, with the version to ask from next time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from compliance.consent import ConsentRecord
from store.errors import StoreConflict

if TYPE_CHECKING:
    from store.database import Store

__all__ = ["Changes", "ComplianceTables", "ErasedRows", "number_pattern", "scrub"]

_JSON = msgspec.json.Encoder()


class ErasedRows(msgspec.Struct, frozen=True, kw_only=True):
    """Rows a GDPR erasure rewrote in the database."""

    cdrs: int
    consents: int


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    """Rows changed after a version (``consents_since``, ``suppressions_since``).

    ``version`` is where the reader is now; ``resets`` counts deletions ever made (rows read
    by version cannot show one: when it moves, the reader starts over from version 0).
    ``consents`` or ``suppressions`` (hash -> scope) holds the rows, whichever was asked.
    """

    version: int
    resets: int
    consents: list[ConsentRecord] = []
    suppressions: dict[str, list[str]] = {}


def scrub(value: Any, pattern: re.Pattern[str], replacement: str) -> Any:
    """``value`` (decoded JSON) with every match of ``pattern`` in its strings replaced."""
    if isinstance(value, str):
        return pattern.sub(replacement, value)
    if isinstance(value, list):
        return [scrub(v, pattern, replacement) for v in value]
    if isinstance(value, dict):
        return {
            scrub(k, pattern, replacement): scrub(v, pattern, replacement) for k, v in value.items()
        }
    return value


def number_pattern(forms: Sequence[str]) -> re.Pattern[str]:
    """Any of ``forms`` (spellings of one number) not inside a longer run of digits."""
    alts = "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))
    return re.compile(rf"(?<![0-9+])(?:{alts})(?![0-9])")


def _doc(obj: msgspec.Struct) -> str:
    return _JSON.encode(obj).decode()


class ComplianceTables:
    """Consent records, suppressions and erasure (``Store.compliance``)."""

    def __init__(self, db: Store) -> None:
        self._db = db

    # -- consent records -----------------------------------------------------------------------

    async def insert_consent(self, record: ConsentRecord) -> None:
        """Store a new consent record. Raises StoreConflict if its id is taken."""
        try:
            async with self._db.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO consents (id, caller, campaign_id, doc) VALUES ($1, $2, $3, $4)",
                    record.id,
                    record.caller,
                    record.campaign_id,
                    _doc(record),
                )
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"consent {record.id!r} already exists") from exc

    async def update_consent(self, record: ConsentRecord) -> bool:
        """Replace a stored record (a revocation); False if there is none with that id."""
        async with self._db.pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE consents SET caller = $2, campaign_id = $3, doc = $4, updated_at = now() "
                "WHERE id = $1",
                record.id,
                record.caller,
                record.campaign_id,
                _doc(record),
            )
        return bool(status != "UPDATE 0")

    async def get_consent(self, record_id: str) -> ConsentRecord | None:
        async with self._db.pool.acquire() as conn:
            doc = await conn.fetchval("SELECT doc FROM consents WHERE id = $1", record_id)
        return None if doc is None else msgspec.json.decode(doc, type=ConsentRecord)

    async def list_consents(
        self,
        *,
        caller: str | None = None,
        campaign_id: str | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> list[ConsentRecord]:
        """Consent records in id order, filtered; ``after_id`` is a keyset cursor."""
        conds: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("caller = ${}", caller),
            ("campaign_id = ${}", campaign_id),
            ("id > ${}", after_id),
        ):
            if value is not None:
                args.append(value)
                conds.append(cond.format(len(args)))
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = f"SELECT doc FROM consents{where} ORDER BY id"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [msgspec.json.decode(r["doc"], type=ConsentRecord) for r in rows]

    async def load_consents(self) -> list[ConsentRecord]:
        """Every consent record, to fill the compliance gate's ConsentStore at start."""
        return await self.list_consents()

    async def consents_since(self, version: int) -> Changes:
        """Consent records written after ``version`` (all of them from 0), in one snapshot."""
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            now = await conn.fetchrow(
                "SELECT version, resets FROM sync_versions WHERE kind = 'consent'"
            )
            rows = await conn.fetch(
                "SELECT doc FROM consents WHERE version > $1 ORDER BY version", version
            )
        return Changes(
            version=now["version"],
            resets=now["resets"],
            consents=[msgspec.json.decode(r["doc"], type=ConsentRecord) for r in rows],
        )

    async def suppressions_since(self, version: int) -> Changes:
        """Suppression entries written after ``version`` (all from 0), in one snapshot."""
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            now = await conn.fetchrow(
                "SELECT version, resets FROM sync_versions WHERE kind = 'erasure'"
            )
            rows = await conn.fetch(
                "SELECT hash, scope FROM suppressions WHERE version > $1 ORDER BY version",
                version,
            )
        return Changes(
            version=now["version"],
            resets=now["resets"],
            suppressions={r["hash"]: list(r["scope"]) for r in rows},
        )

    # -- GDPR erasure --------------------------------------------------------------------------

    async def load_suppressions(self) -> dict[str, list[str]]:
        """Erased numbers' hashes -> the DNC lists they stay blocked on (for ``Suppression``)."""
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch("SELECT hash, scope FROM suppressions ORDER BY hash")
        return {r["hash"]: list(r["scope"]) for r in rows}

    async def erase_caller(
        self, forms: Sequence[str], replacement: str, scope: Sequence[str]
    ) -> ErasedRows:
        """Replace a caller number by ``replacement`` in CDRs and consent records, and keep a
        suppression entry ``replacement`` -> ``scope``, all in one transaction.

        ``forms`` are the number's spellings (E.164 first, then e.g. without the plus). CDRs
        whose ``caller`` is one of them get ``replacement`` there and in every string of their
        auction record; consent records likewise, in every field.
        """
        pattern = number_pattern(forms)
        wanted = list(forms)
        async with self._db.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT call_id, received_at, auction FROM cdrs WHERE caller = ANY($1::text[]) "
                "FOR UPDATE",
                wanted,
            )
            if rows:
                await conn.executemany(
                    "UPDATE cdrs SET caller = $1, auction = $2::jsonb "
                    "WHERE call_id = $3 AND received_at = $4",
                    [
                        (
                            replacement,
                            None
                            if r["auction"] is None
                            else _JSON.encode(
                                scrub(msgspec.json.decode(r["auction"]), pattern, replacement)
                            ).decode(),
                            r["call_id"],
                            r["received_at"],
                        )
                        for r in rows
                    ],
                )
            consents = await conn.fetch(
                "SELECT id, doc FROM consents WHERE caller = ANY($1::text[]) FOR UPDATE", wanted
            )
            if consents:
                await conn.executemany(
                    "UPDATE consents SET caller = $2, doc = $3::jsonb, updated_at = now() "
                    "WHERE id = $1",
                    [
                        (
                            r["id"],
                            replacement,
                            _JSON.encode(
                                scrub(msgspec.json.decode(r["doc"]), pattern, replacement)
                            ).decode(),
                        )
                        for r in consents
                    ],
                )
            await conn.execute(
                "INSERT INTO suppressions (hash, scope) VALUES ($1, $2::text[]) "
                "ON CONFLICT (hash) DO UPDATE SET scope = ARRAY(SELECT DISTINCT s FROM "
                "unnest(suppressions.scope || EXCLUDED.scope) AS s ORDER BY s), updated_at = now()",
                replacement,
                sorted(set(scope)),
            )
        return ErasedRows(cdrs=len(rows), consents=len(consents))
