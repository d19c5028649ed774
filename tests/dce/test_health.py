"""dce/health.py: the cached database probe and the /healthz verdict, with a real CDR writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from dce.health import DatabaseProbe, health
from store.cdr import Cdr, Disposition
from store.database import Store
from store.writer import CdrWriter

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def cdr(i: int) -> Cdr:
    return Cdr(call_id=f"h-{i}", a_call_id=f"a-{i}", received_at=T0, ended_at=T0,
               disposition=Disposition.FAILED, sip_status=503)  # fmt: skip


async def test_probe_runs_once_per_interval_and_shares_the_run_in_flight() -> None:
    clock = Clock()
    gate = asyncio.Event()
    runs = 0

    async def check() -> None:
        nonlocal runs
        runs += 1
        await gate.wait()

    probe = DatabaseProbe(check, interval=2.0, timeout=5.0, monotonic=clock)
    waiting = [asyncio.create_task(probe.ok()) for _ in range(20)]  # monitors polling at once
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [True] * 20
    assert runs == 1
    clock.t += 1.9
    assert await probe.ok() and runs == 1  # cached
    clock.t += 0.2
    assert await probe.ok() and runs == 2


async def test_probe_failure_names_the_error_and_recovers() -> None:
    clock = Clock()
    fail = True

    async def check() -> None:
        if fail:
            raise ConnectionRefusedError("connection refused")

    probe = DatabaseProbe(check, interval=1.0, monotonic=clock)
    assert not await probe.ok()
    assert probe.error == "ConnectionRefusedError: connection refused"
    fail = False
    assert not await probe.ok()  # still the cached answer
    clock.t += 1.0
    assert await probe.ok() and probe.error is None


async def test_probe_is_bounded_by_its_timeout() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    probe = DatabaseProbe(hangs, timeout=0.05)
    async with asyncio.timeout(2.0):
        assert not await probe.ok()
    assert probe.error == "TimeoutError: no answer"


async def test_probe_against_a_real_unreachable_database() -> None:
    async def ping() -> None:
        conn = await asyncpg.connect(UNREACHABLE)
        await conn.close()

    probe = DatabaseProbe(ping, timeout=2.0)
    assert not await probe.ok()
    assert probe.error is not None and "refused" in probe.error.lower()


async def test_starting_is_503() -> None:
    status, body = await health(started=False, probe=None, writer=None, extra={"live_calls": 0})
    assert (status, body) == (503, {"status": "starting", "live_calls": 0})


async def test_healthy_writer_and_database_is_200(
    database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    store = Store(schema=pg_schema)
    await store.connect(database_url)
    await store.migrate()
    await store.ensure_partitions(T0)
    w = CdrWriter(store, tmp_path)
    await w.start()
    w.submit(cdr(1))
    await w.flush()

    async def ping() -> None:
        async with store.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    status, body = await health(started=True, probe=DatabaseProbe(ping), writer=w, extra={})
    assert status == 200
    assert body == {"status": "ok", "cdr": {"database_ok": True, "spooled": 0, "in_memory": 0,
                                            "rejected": 0, "lost": 0}}  # fmt: skip
    await w.close()
    await store.close()


@pytest.fixture
async def down_writer(tmp_path: Path) -> AsyncIterator[CdrWriter]:
    w = CdrWriter(UNREACHABLE, tmp_path, timeout=1.0, retry_min=30, retry_max=30)
    await w.start()
    yield w
    await w.close(timeout=2.0)


async def test_writer_that_cannot_reach_the_database_is_503_with_reasons(
    down_writer: CdrWriter,
) -> None:
    for i in range(3):
        down_writer.submit(cdr(i))
    await down_writer.flush()

    async def ok() -> None:
        return None

    # The probe has not noticed (or the database blinked): the writer's knowledge suffices.
    status, body = await health(started=True, probe=DatabaseProbe(ok), writer=down_writer,
                                extra={"live_calls": 2})  # fmt: skip
    assert status == 503 and body["status"] == "unavailable" and body["live_calls"] == 2
    assert body["problems"][0].startswith("database unreachable: ")
    assert "refused" in body["problems"][0].lower()
    assert body["problems"][1] == (
        "3 CDRs waiting for the database (3 spooled on disk, 0 in memory)"
    )
    assert body["cdr"] == {"database_ok": False, "spooled": 3, "in_memory": 0, "rejected": 0,
                           "lost": 0}  # fmt: skip


async def test_a_probe_success_wakes_the_writer_once_not_per_poll(down_writer: CdrWriter) -> None:
    clock = Clock()
    down_writer.submit(cdr(1))
    await down_writer.flush()
    assert not down_writer.db_ok

    async def ok() -> None:
        return None

    probe = DatabaseProbe(ok, interval=2.0, monotonic=clock)
    attempts = []
    retry = down_writer.retry_now

    def counting() -> None:
        attempts.append(clock.t)
        retry()

    down_writer.retry_now = counting  # type: ignore[method-assign]
    for _ in range(5):
        await health(started=True, probe=probe, writer=down_writer, extra={})
    clock.t += 2.0
    await health(started=True, probe=probe, writer=down_writer, extra={})
    assert attempts == [100.0, 102.0]  # one per fresh probe, not one per request
