"""store/writer.py against a real PostgreSQL, with a TCP proxy that cuts the link."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from store.cdr import Cdr, Disposition
from store.database import Store
from store.errors import CdrWriterError
from store.writer import CdrWriter
from switch.record import HangupSide

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def make_cdr(i: int, *, received_at: datetime = T0, **fields: Any) -> Cdr:
    return Cdr(
        call_id=f"call-{i:06d}",
        a_call_id=f"a-{i}@192.0.2.1",
        received_at=received_at + timedelta(milliseconds=i),
        ended_at=received_at + timedelta(milliseconds=i, seconds=30),
        disposition=Disposition.ANSWERED,
        sip_status=200,
        **fields,
    )


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("spool-*.jsonl"))


@pytest.fixture
async def store(database_url: str, pg_schema: str) -> AsyncIterator[Store]:
    s = Store(schema=pg_schema)
    await s.connect(database_url)
    await s.migrate()
    await s.ensure_partitions(T0)
    yield s
    await s.close()


async def count_distinct(store: Store) -> tuple[int, int]:
    async with store.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT call_id) AS d FROM cdrs")
    assert row is not None
    return int(row["n"]), int(row["d"])


class TcpProxy:
    """127.0.0.1:<random port> -> the database (TCP or Unix socket), with a switch to cut it.

    ``cut("reset")`` aborts every open link and resets new ones (refused/reset connections);
    ``cut("hang")`` swallows bytes both ways and holds new connections open (timeouts).
    """

    def __init__(self, dsn: str) -> None:
        url = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(url.query)
        host = query.get("host", [url.hostname or "127.0.0.1"])[0]
        port = int(query.get("port", [str(url.port or 5432)])[0])
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._url = url
        self.mode: Literal["open", "reset", "hang"] = "open"
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._restored = asyncio.Event()
        self.port = 0

    async def start(self) -> str:
        """Start listening; returns the DSN that goes through the proxy."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        netloc = f"{self._url.username or 'postgres'}@127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(("postgresql", netloc, self._url.path, "", ""))

    def cut(self, mode: Literal["reset", "hang"]) -> None:
        self.mode = mode
        self._restored.clear()
        if mode == "reset":
            for w in list(self._links):
                w.transport.abort()

    def restore(self) -> None:
        self.mode = "open"
        self._restored.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._links):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.transport.abort()
            return
        if self.mode == "hang":
            await self._restored.wait()
            writer.transport.abort()
            return
        if self._unix is not None:
            up_r, up_w = await asyncio.open_unix_connection(self._unix)
        else:
            up_r, up_w = await asyncio.open_connection(*self._tcp)
        self._links |= {writer, up_w}
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            self._links -= {writer, up_w}
            for w in (writer, up_w):
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.mode == "hang":
                    continue  # swallowed: the peer waits until its timeout
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(database_url)
    yield p
    await p.close()


async def test_rows_are_written_by_the_timer_without_flush(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    for i in range(5):
        w.submit(make_cdr(i))
    for _ in range(100):  # the 200 ms timer flushes; give it up to 2 s
        if await store.cdrs.count() == 5:
            break
        await asyncio.sleep(0.02)
    assert await store.cdrs.count() == 5
    assert (w.written, w.batches, w.queued) == (5, 1, 0)
    for i in range(5, 255):
        w.submit(make_cdr(i))
    await w.flush()
    assert await store.cdrs.count() == 255
    assert w.batches <= 4  # 250 rows in one go: a few batches, not 250 inserts
    await w.close()
    assert (w.spooled, w.failed) == (0, 0)


async def test_cdr_round_trip_with_exact_money(store: Store, tmp_path: Path) -> None:
    auction = {"type": "second_price", "bids": [{"buyer_id": "b1", "bid": "12.345678"}]}
    cdr = make_cdr(
        1,
        b_call_id="b-1",
        trunk_id="t1",
        caller="+12125551234",
        called="+18005550100",
        caller_state="NY",
        answered_at=T0 + timedelta(seconds=2),
        duration_ms=28_000,
        hangup_side=HangupSide.CALLER,
        campaign_id="c1",
        buyer_id="b1",
        endpoint="sip:x@192.0.2.10",
        bid=12_345_678,
        price=1,
        payout=999_999_999_999,
        billable=True,
        attempts=2,
        compliance=["calling_hours", "dnc"],
        fraud_score=7,
        attestation="A",
        decision_us=1234,
        auction=auction,
        packets_a_to_b=1500,
        packets_b_to_a=1499,
        bytes_a_to_b=258_000,
        bytes_b_to_a=257_828,
        packets_dropped=1,
    )
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(cdr)
    await w.close()
    row = await store.cdrs.fetch(cdr.call_id)
    assert row is not None
    assert row["bid"] == Decimal("12.345678")
    assert row["price"] == Decimal("0.000001")
    assert row["payout"] == Decimal("999999.999999")
    assert row["disposition"] == "answered" and row["hangup_side"] == "caller"
    assert row["auction"] == auction
    expected = msgspec.structs.asdict(cdr)
    for money in ("bid", "price", "payout", "auction", "disposition", "hangup_side"):
        del expected[money], row[money]
    assert row == expected


async def test_replayed_cdr_is_not_written_twice(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(make_cdr(1))
    await w.flush()
    w.submit(make_cdr(1))
    w.submit(make_cdr(2))
    await w.close()
    assert await count_distinct(store) == (2, 2)
    assert (w.written, w.duplicates) == (2, 1)


@pytest.mark.parametrize("mode", ["reset", "hang"])
async def test_outage_loses_and_duplicates_nothing(
    store: Store, proxy: TcpProxy, tmp_path: Path, mode: Literal["reset", "hang"]
) -> None:
    dsn = await proxy.start()
    w = CdrWriter(dsn, tmp_path, schema=store.schema, timeout=0.5, retry_min=0.05, retry_max=0.2)
    await w.start()
    for i in range(500):
        w.submit(make_cdr(i))
        if i % 10 == 9:
            await asyncio.sleep(0.002)  # let the writer run while calls keep ending
        if i == 149:
            await w.flush()
            assert await store.cdrs.count() == 150
            proxy.cut(mode)
        if i == 349:
            await w.flush()  # these 200 could only go to the spool
            assert w.spooled >= 200 and not w.db_ok
            assert spool_files(tmp_path)
            proxy.restore()
    await w.close()
    assert await count_distinct(store) == (500, 500)
    assert spool_files(tmp_path) == []
    assert w.written == 500 and w.replayed >= 200 and w.failed == 0


async def test_spool_of_a_killed_writer_is_replayed_at_next_start(
    store: Store, tmp_path: Path
) -> None:
    child = textwrap.dedent(f"""
        import asyncio, sys
        from datetime import datetime, UTC
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from store.cdr import Cdr
        from store.writer import CdrWriter

        async def main():
            w = CdrWriter({UNREACHABLE!r}, Path({str(tmp_path)!r}), timeout=1.0)
            await w.start()
            t = datetime(2026, 11, 23, 15, tzinfo=UTC)
            for i in range(50):
                w.submit(Cdr(call_id=f"dead-{{i}}", a_call_id="a", received_at=t, ended_at=t,
                             disposition="failed", sip_status=503))
            await w.flush()
            print(w.spooled, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = await proc.stdout.readline()
    assert line.strip() == b"50"
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert spool_files(tmp_path)

    w = CdrWriter(store, tmp_path)
    await w.start()
    await w.close()
    assert await store.cdrs.count() == 50
    assert (w.replayed, w.written) == (50, 50)
    assert spool_files(tmp_path) == []


async def test_torn_spool_line_is_kept_aside(store: Store, tmp_path: Path) -> None:
    good = b"".join(msgspec.json.encode(make_cdr(i)) + b"\n" for i in range(3))
    (tmp_path / "spool-00000000000000000001-1-000001.jsonl").write_bytes(
        good + b'{"call_id": "torn'
    )
    w = CdrWriter(store, tmp_path)
    await w.start()
    await w.close()
    assert await store.cdrs.count() == 3
    assert w.failed == 1
    rejected = (tmp_path / "rejected.jsonl").read_bytes().splitlines()
    assert len(rejected) == 1 and b"torn" in rejected[0]
    assert spool_files(tmp_path) == []


async def test_bad_rows_are_rejected_and_the_rest_written(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(make_cdr(1, bid=1_000_000))
    w.submit(make_cdr(2, bid=10**13))  # $10,000,000: beyond NUMERIC(12,6)
    w.submit(make_cdr(3, price=1.5))  # a float is a bug, not money
    w.submit(make_cdr(4))
    await w.close()
    assert await store.cdrs.count() == 2
    assert (w.written, w.failed) == (2, 2)
    rejected = [
        msgspec.json.decode(x) for x in (tmp_path / "rejected.jsonl").read_bytes().splitlines()
    ]
    assert sorted(r["cdr"]["call_id"] for r in rejected) == ["call-000002", "call-000003"]


async def test_missing_month_partition_is_created(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(make_cdr(1, received_at=datetime(2031, 5, 17, tzinfo=UTC)))
    w.submit(make_cdr(2))
    await w.close()
    assert await store.cdrs.count() == 2 and w.failed == 0


async def test_queue_beyond_its_bound_goes_to_the_spool(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path, max_queue=100)
    for i in range(250):  # not started yet: nothing drains the queue
        w.submit(make_cdr(i))
    assert w.queued <= 100 and w.spooled >= 150
    await w.start()
    await w.close()
    assert await count_distinct(store) == (250, 250)
    assert spool_files(tmp_path) == []


async def test_database_down_at_start_then_back(
    store: Store, proxy: TcpProxy, tmp_path: Path
) -> None:
    dsn = await proxy.start()
    proxy.cut("reset")
    w = CdrWriter(dsn, tmp_path, schema=store.schema, retry_min=0.05, retry_max=0.1)
    await w.start()
    for i in range(30):
        w.submit(make_cdr(i))
    await w.flush()
    assert w.spooled == 30 and await store.cdrs.count() == 0
    proxy.restore()
    for _ in range(100):  # the backoff expires and the spool is replayed without help
        if await store.cdrs.count() == 30:
            break
        await asyncio.sleep(0.02)
    assert await store.cdrs.count() == 30 and w.db_ok
    await w.close()
    assert spool_files(tmp_path) == []


async def test_submit_after_close_is_spooled_for_the_next_run(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    await w.close()
    w.submit(make_cdr(1))  # e.g. a call that ended during shutdown
    assert w.spooled == 1
    w2 = CdrWriter(store, tmp_path)
    await w2.start()
    await w2.close()
    assert await store.cdrs.count() == 1


async def test_one_writer_per_spool_dir(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    with pytest.raises(CdrWriterError, match="another writer"):
        await CdrWriter(store, tmp_path).start()
    await w.close()
