"""The ``cdrs`` table: the row form of a CDR (``cdr_record``) and the queries that read it.

The CDR writer (store/writer.py) is the only insert path; it COPYs ``cdr_record`` rows in
``CDR_COLUMNS`` order. Money is integer micro-dollars in ``Cdr`` and NUMERIC(12, 6) USD here.
Reads give dicts as asyncpg returns them (money as Decimal USD, the auction record decoded).
``CdrTable`` is reached as ``Store.cdrs``; the monthly partitions are store/database.py's.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from exchange.money import to_decimal
from store.cdr import Cdr

if TYPE_CHECKING:
    from store.database import Store

__all__ = ["CDR_COLUMNS", "CDR_LIST_COLUMNS", "CdrTable", "cdr_record"]

# Columns of ``cdrs`` in table order: exactly the fields of Cdr (a test keeps them equal).
CDR_COLUMNS: tuple[str, ...] = Cdr.__struct_fields__
# CDR columns for list views: everything but the (large) auction record.
CDR_LIST_COLUMNS: tuple[str, ...] = tuple(c for c in CDR_COLUMNS if c != "auction")
_CDR_LIST_SQL = ", ".join(CDR_LIST_COLUMNS)
_MONEY_IDX = tuple(CDR_COLUMNS.index(f) for f in ("bid", "price", "payout"))
_ENUM_IDX = tuple(CDR_COLUMNS.index(f) for f in ("disposition", "hangup_side"))
_AUCTION_IDX = CDR_COLUMNS.index("auction")
_JSON = msgspec.json.Encoder()


def cdr_record(cdr: Cdr) -> tuple[Any, ...]:
    """One ``cdrs`` row in CDR_COLUMNS order, as asyncpg's COPY wants it.

    Raises:
        TypeError: a money field is not an integer (floats are refused, never rounded).
    """
    row = list(msgspec.structs.astuple(cdr))
    for i in _MONEY_IDX:
        v = row[i]
        if v is not None:
            if type(v) is not int:
                raise TypeError(f"{CDR_COLUMNS[i]} must be integer micro-dollars, got {v!r}")
            row[i] = to_decimal(v)
    for i in _ENUM_IDX:
        if row[i] is not None:
            row[i] = str(row[i])
    if row[_AUCTION_IDX] is not None:
        row[_AUCTION_IDX] = _JSON.encode(row[_AUCTION_IDX]).decode()
    return tuple(row)


class CdrTable:
    """Reads of ``cdrs`` (``Store.cdrs``): one CDR, a filtered page, the row count."""

    def __init__(self, db: Store) -> None:
        self._db = db

    async def fetch(self, call_id: str) -> dict[str, Any] | None:
        """One CDR as a dict (money as Decimal USD, auction decoded), or None."""
        async with self._db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM cdrs WHERE call_id = $1 ORDER BY received_at DESC LIMIT 1", call_id
            )
        if row is None:
            return None
        out = dict(row)
        if out.get("auction") is not None:
            out["auction"] = msgspec.json.decode(out["auction"])
        return out

    async def count(self) -> int:
        async with self._db.pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM cdrs")
        return int(n)

    async def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        buyer_id: str | None = None,
        disposition: str | None = None,
        campaign_id: str | None = None,
        trunk_id: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """CDRs newest first (``received_at`` then ``call_id`` descending), without ``auction``.

        ``since`` is inclusive and ``until`` exclusive; ``before`` is a keyset cursor: only rows
        strictly after it in this order (the last row of the previous page).
        """
        conds: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if since is not None:
            conds.append(f"received_at >= {arg(since)}")
        if until is not None:
            conds.append(f"received_at < {arg(until)}")
        for column, value in (
            ("buyer_id", buyer_id),
            ("disposition", disposition),
            ("campaign_id", campaign_id),
            ("trunk_id", trunk_id),
        ):
            if value is not None:
                conds.append(f"{column} = {arg(value)}")
        if before is not None:
            conds.append(f"(received_at, call_id) < ({arg(before[0])}, {arg(before[1])})")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = (
            f"SELECT {_CDR_LIST_SQL} FROM cdrs{where} "
            f"ORDER BY received_at DESC, call_id DESC LIMIT {arg(limit)}"
        )
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [dict(r) for r in rows]
