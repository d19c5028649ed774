"""store/writer.py against a real PostgreSQL, with a TCP proxy that cuts the link (and a tmpfs
that fills up)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from store.cdr import Cdr, Disposition
from store.cdrtext import restore_text
from store.database import Store
from store.errors import CdrWriterError
from store.writer import CdrWriter
from switch.record import HangupSide

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def make_cdr(i: int, *, received_at: datetime = T0, **fields: Any) -> Cdr:
    base: dict[str, Any] = {
        "call_id": f"call-{i:06d}",
        "a_call_id": f"a-{i}@192.0.2.1",
        "received_at": received_at + timedelta(milliseconds=i),
        "ended_at": received_at + timedelta(milliseconds=i, seconds=30),
        "disposition": Disposition.ANSWERED,
        "sip_status": 200,
    }
    return Cdr(**(base | fields))


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


# --- any bytes a peer sends (issue 11) ---------------------------------------------------------


def wire(data: bytes) -> str:
    """What switch/message.py makes of header bytes that are not valid UTF-8."""
    return data.decode("utf-8", "surrogateescape")


ODD: dict[str, Any] = {
    "a_call_id": wire(b"bad-\xff\xfe-\xc3(@192.0.2.1"),
    "caller": "+1312\x00260",
    "called": "\x1b[2J\x85" + "9" * 20_000,  # control characters; far past any index row limit
    "endpoint": "sip:x@192.0.2.10;p=\\\x7f",
    "compliance": ["dnc:pass", wire(b"\x00\xff")],
    "auction": {"rule": wire(b"\xe9t\xe9"), wire(b"k\x00"): ["\x01", {"n": 1}]},
}


async def test_odd_bytes_cost_no_row_and_are_stored_escaped(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    fields = list(ODD)
    for i in range(40):  # every 7th row has one odd field, in turn; the others are plain
        field = fields[(i // 7) % len(fields)]
        w.submit(make_cdr(i, **({field: ODD[field]} if i % 7 == 3 else {})))
    await w.close()
    assert await count_distinct(store) == (40, 40)
    assert (w.written, w.failed) == (40, 0)
    assert not (tmp_path / "rejected.jsonl").exists()
    row = await store.cdrs.fetch("call-000003")
    assert row is not None
    assert row["a_call_id"] == "bad-\\xff\\xfe-\\xc3(@192.0.2.1"
    assert restore_text(row["a_call_id"]).encode("utf-8", "surrogateescape") == (
        b"bad-\xff\xfe-\xc3(@192.0.2.1"
    )


async def test_every_odd_field_in_one_row(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(make_cdr(1, **ODD))
    w.submit(make_cdr(2))
    await w.close()
    assert (w.written, w.failed) == (2, 0)
    row = await store.cdrs.fetch("call-000001")
    assert row is not None
    assert row["caller"] == "+1312\\x00260"
    assert row["called"].startswith("\\x1b[2J\\u0085999") and len(row["called"]) <= 256
    assert row["called"].endswith("]") and "\\[truncated " in row["called"]
    assert row["endpoint"] == "sip:x@192.0.2.10;p=\\\\\\x7f"
    assert row["compliance"] == ["dnc:pass", "\\x00\\xff"]
    assert row["auction"] == {"rule": "\\xe9t\\xe9", "k\\x00": ["\\x01", {"n": 1}]}


async def test_odd_bytes_go_through_the_spool_and_back(store: Store, tmp_path: Path) -> None:
    down = CdrWriter(UNREACHABLE, tmp_path, timeout=1.0)
    await down.start()
    down.submit(make_cdr(1, **ODD))
    down.submit(make_cdr(2))
    await down.close()
    assert (down.spooled, down.failed) == (2, 0) and spool_files(tmp_path)
    up = CdrWriter(store, tmp_path)
    await up.start()
    await up.close()
    assert (up.replayed, up.written, up.failed) == (2, 2, 0)
    row = await store.cdrs.fetch("call-000001")
    assert row is not None and row["a_call_id"] == "bad-\\xff\\xfe-\\xc3(@192.0.2.1"
    assert row["endpoint"] == "sip:x@192.0.2.10;p=\\\\\\x7f"  # not escaped a second time


async def test_a_spool_line_from_before_the_rule_is_cleaned_on_replay(
    store: Store, tmp_path: Path
) -> None:
    # An older writer spooled what msgspec could encode: NUL and control characters, raw.
    line = msgspec.json.encode(make_cdr(1, caller="+1\x00", endpoint="sip:a\\b@192.0.2.1"))
    (tmp_path / "spool-00000000000000000001-1-000001.jsonl").write_bytes(line + b"\n")
    w = CdrWriter(store, tmp_path)
    await w.start()
    await w.close()
    row = await store.cdrs.fetch("call-000001")
    assert row is not None and w.failed == 0
    assert (row["caller"], row["endpoint"]) == ("+1\\x00", "sip:a\\b@192.0.2.1")


async def test_one_bad_row_in_a_thousand_costs_no_other_row(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path, batch_size=1000, max_batch=1000)
    for i in range(1000):
        w.submit(make_cdr(i, bid=10**13 if i == 617 else 1))  # $10,000,000: beyond NUMERIC(12,6)
    await w.start()
    await w.close()
    assert await store.cdrs.count() == 999
    assert (w.written, w.rejected, w.lost) == (999, 1, 0)
    # Bisection: about 2 log2(1000) transactions, where a row-by-row retry takes 1000.
    assert w.batches <= 25, w.batches
    rejected = (tmp_path / "rejected.jsonl").read_bytes().splitlines()
    assert [msgspec.json.decode(x)["cdr"]["call_id"] for x in rejected] == ["call-000617"]


async def test_latency_histograms_count_rows_and_batches(store: Store, tmp_path: Path) -> None:
    w = CdrWriter(store, tmp_path)
    await w.start()
    ended = datetime.now(UTC) - timedelta(seconds=3)
    for i in range(30):
        w.submit(make_cdr(i, received_at=ended - timedelta(seconds=30)))
    await w.close()
    assert w.commit_delay.count == 30 and w.batch_seconds.count == w.batches >= 1
    buckets = dict(w.commit_delay.cumulative())
    # Each call ended about 3 s before its commit: none under 2.5 s, all under 10 s.
    assert (buckets["2.5"], buckets["10.0"], buckets["+Inf"]) == (0, 30, 30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up (needs root, else the test is skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_during_an_outage_holds_rows_and_loses_none(
    store: Store, proxy: TcpProxy, small_disk: Path
) -> None:
    dsn = await proxy.start()
    proxy.cut("reset")
    w = CdrWriter(dsn, small_disk, schema=store.schema, timeout=0.5, retry_min=0.05,
                  retry_max=0.2)  # fmt: skip
    await w.start()
    pad = "p" * 500  # about 1.3 KB a line: 300 rows are six times the disk
    for i in range(300):
        w.submit(make_cdr(i, auction={"pad": pad}))
        if i % 50 == 49:
            await w.flush()
    assert not w.db_ok and w.spooled < 300 and w.queued == 300 - w.spooled
    assert w.disk_error is not None and "No space" in w.disk_error
    assert w.lost == 0 and w.failed == 0
    for path in spool_files(small_disk):  # whole lines only: nothing torn to reject later
        for line in path.read_bytes().splitlines():
            msgspec.json.decode(line, type=Cdr)
    proxy.restore()
    for _ in range(200):
        if await store.cdrs.count() == 300:
            break
        await asyncio.sleep(0.02)
    await w.close()
    assert await count_distinct(store) == (300, 300)
    assert (w.failed, w.queued, w.spool_rows) == (0, 0, 0)
    assert spool_files(small_disk) == []
    assert not (small_disk / "rejected.jsonl").exists()


async def test_counts_of_what_waits(store: Store, proxy: TcpProxy, tmp_path: Path) -> None:
    dsn = await proxy.start()
    proxy.cut("reset")
    w = CdrWriter(dsn, tmp_path, schema=store.schema, retry_min=5, retry_max=5)
    await w.start()
    for i in range(12):
        w.submit(make_cdr(i))
    await w.flush()
    assert (w.db_ok, w.spool_rows, w.queued) == (False, 12, 0)
    assert w.down_since is not None and w.last_error is not None
    proxy.restore()
    w.retry_now()  # without it the 5 s backoff would hold the replay back
    for _ in range(100):
        if w.db_ok and w.spool_rows == 0:
            break
        await asyncio.sleep(0.02)
    assert (w.db_ok, w.spool_rows) == (True, 0) and w.down_since is None
    await w.close()
    assert await store.cdrs.count() == 12
