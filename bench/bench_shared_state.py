"""Shared state between instances (dce/sync.py, store/dnc.py). Not a test: it prints figures.

    DCE_TEST_DATABASE_URL=postgresql://root@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_shared_state.py [--numbers 10000000] [--profiles 1000,5000]

Against a real PostgreSQL (a scratch schema, dropped at the end), measures:

- ``dce dnc import`` into the database (``dce.dncimport.import_into``): parse + sort + store of
  a generated N-number file, numbers/s, and the database write alone; beside it the same file
  imported in memory only and with the file write of earlier versions;
- the reload of that list on another instance: commit -> the new list in its gate (read in
  chunks, CRC, lookup directory), and the worst event-loop stall meanwhile (a 1 ms ticker);
- resident memory per million numbers in a fresh process that loaded the list from the
  database (the steady state of an instance);
- the propagation time of small changes, commit -> applied on the other instance (a DNC list of
  one number, a consent record), over 20 rounds: p50 and max;
- the exchange reload: compile time for K bid profiles, and the loop's worst stall while an
  instance reloads it (compiled in a worker thread) against compiling on the loop.

Targets: import >= 1M numbers/s, <= 8.5 MB per million, small changes well under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compliance import nanp, rss_bytes, write_numbers

from compliance.check import Gate
from compliance.consent import ConsentRecord
from compliance.dnc import DncList, DncStore, release_memory
from compliance.erasure import Suppression
from dce.dncimport import import_into
from dce.sync import SharedState
from exchange.auction_index import compile_index
from exchange.models import ExchangeConfig
from store.database import Store

NOW = datetime(2026, 5, 1, 17, 0, tzinfo=UTC)


class Ticker:
    """The worst lateness of a 1 ms sleep on this loop: how long the loop was held."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - t - 0.001)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True


async def until(check: Callable[[], bool], timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not check():
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("timed out")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - t0


async def instance(url: str, schema: str, secret: bytes) -> tuple[Store, Gate, SharedState]:
    store = Store(schema=schema, max_size=3)
    await store.connect(url)
    await store.migrate()
    gate = Gate(suppression=Suppression(secret))
    state = SharedState(
        store, gate, secret, compile=compile_index, apply_exchange=lambda c, i: None
    )
    await state.load()
    state.start()
    return store, gate, state


def rss_child(url: str, schema: str) -> None:
    """Child mode: load every stored list as an instance does; print RSS growth and count."""

    async def go() -> None:
        store = Store(schema=schema, max_size=1)
        await store.connect(url)
        before = rss_bytes()
        lst = await store.dnc.load("federal")
        after = rss_bytes()
        print(after - before, len(lst) if lst is not None else 0)
        await store.close()

    asyncio.run(go())


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("DCE_TEST_DATABASE_URL")
    if not url:
        sys.exit("set DCE_TEST_DATABASE_URL (a PostgreSQL this may create a schema on)")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    secret = os.urandom(32)
    load1, _, _ = os.getloadavg()
    print(f"host: {os.cpu_count()} CPUs, load average {load1:.2f}")
    a = Store(schema=schema, max_size=3)
    await a.connect(url)
    await a.migrate()
    b_store, b_gate, b = await instance(url, schema, secret)
    try:
        with tempfile.TemporaryDirectory(prefix="dce-bench-") as tmp:
            src = Path(tmp) / "federal.txt"
            write_numbers(src, args.numbers)
            size = src.stat().st_size
            t = time.perf_counter()
            files = DncStore()
            base = files.import_file("federal", src, loaded_at=NOW)
            took = time.perf_counter() - t
            t = time.perf_counter()
            files.save(Path(tmp) / "dnc")
            saved = time.perf_counter() - t
            print(
                f"DNC import in memory (DncStore.import_file): {base.imported / took / 1e6:.2f}M "
                f"numbers/s; with the file write of earlier versions: "
                f"{base.imported / (took + saved) / 1e6:.2f}M numbers/s"
            )
            del base, files
            release_memory()
            t = time.perf_counter()
            report = await import_into(
                a, src, name="federal", source="bench", loaded_at=NOW, merge=False
            )
            took = time.perf_counter() - t
        print(
            f"dce dnc import into the database: {report.imported:,} numbers "
            f"({size / 1e6:.0f} MB) in {took:.2f}s = {report.imported / took / 1e6:.2f}M "
            "numbers/s (parse + sort + store)"
        )
        # Each write is a new version that B loads: let B finish before the next figure.
        stored = (await a.dnc.catalog())["federal"].version
        await until(lambda: b.dnc_versions.get("federal") == stored)
        lst = await a.dnc.load("federal")
        assert lst is not None
        t = time.perf_counter()
        stored = await a.dnc.save(lst)
        write = time.perf_counter() - t
        print(
            f"  the database write alone: {len(lst):,} numbers in {write:.2f}s = "
            f"{len(lst) / write / 1e6:.1f}M numbers/s"
        )
        await until(lambda: b.dnc_versions.get("federal") == stored)
        with Ticker() as tick:
            committed = time.perf_counter()
            stored = await a.dnc.save(lst)
            await until(lambda: b.dnc_versions.get("federal") == stored)
            reload = time.perf_counter() - committed
        del lst
        print(
            f"another instance has the new version of the {len(b_gate.dnc['federal']):,}-number "
            f"list in its gate {reload:.2f}s after the write began (write included); its event loop was held {tick.worst * 1000:.0f} ms "
            "at worst meanwhile"
        )
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", schema],
            check=True, capture_output=True, text=True, env={**os.environ},
        ).stdout.split()  # fmt: skip
        grown, count = int(out[0]), int(out[1])
        print(
            f"DNC memory (fresh process, {count:,} numbers loaded from the database): "
            f"{grown / 1e6:.1f} MB = {grown / 1e6 / (count / 1e6):.2f} MB per million"
        )

        rng = random.Random(3)
        dnc_lat: list[float] = []
        consent_lat: list[float] = []
        for i in range(20):
            number = nanp(rng)
            t = time.perf_counter()
            await a.dnc.save(
                DncList("internal", source="bench", loaded_at=NOW, keys=array("d", [number]))
            )
            await until(lambda n=number: "internal" in b_gate.dnc.lookup(f"+1{n}"))
            dnc_lat.append(time.perf_counter() - t)
            caller = f"+1{nanp(rng)}"
            t = time.perf_counter()
            await a.compliance.insert_consent(
                ConsentRecord(id=f"k{i}", caller=caller, campaign_id="c1", granted_at=NOW)
            )
            await until(lambda c=caller: b_gate.consent.has_valid(c, "c1", NOW))
            consent_lat.append(time.perf_counter() - t)
        for name, xs in (("a DNC list of one number", dnc_lat), ("a consent record", consent_lat)):
            print(
                f"{name}: applied on the other instance {statistics.median(xs) * 1000:.1f} ms "
                f"after the write began (p50), {max(xs) * 1000:.1f} ms max, 20 rounds"
            )

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_auction import make_config

        for k in args.profiles:
            cfg = scaled_config(make_config, k)
            t = time.perf_counter()
            compile_index(cfg)
            compile_s = time.perf_counter() - t
            with Ticker() as tick:
                await asyncio.to_thread(compile_index, cfg)
            threaded = tick.worst
            with Ticker() as tick:
                await asyncio.sleep(0.005)
                compile_index(cfg)
                await asyncio.sleep(0.005)
            inline = tick.worst
            print(
                f"exchange config of {k:,} bid profiles: compiles in {compile_s * 1000:.0f} ms; "
                f"loop held {threaded * 1000:.1f} ms at worst compiling in a thread (as "
                f"dce/sync.py does), {inline * 1000:.0f} ms compiling on the loop"
            )
    finally:
        await b.stop()
        await b_store.close()
        async with a.pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await a.close()


def scaled_config(make_config: Callable[..., ExchangeConfig], profiles: int) -> ExchangeConfig:
    """bench_auction's 1,000-profile config repeated to ``profiles`` (buyer ids renamed)."""
    import msgspec

    parts = [make_config(random.Random(i), False) for i in range(max(1, profiles // 1000))]
    buyers = [
        msgspec.structs.replace(b, id=f"{b.id}-{i}")
        for i, part in enumerate(parts)
        for b in part.buyers
    ]
    return ExchangeConfig(trunks=parts[0].trunks, campaigns=parts[0].campaigns, buyers=buyers)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--numbers", type=int, default=10_000_000)
    ap.add_argument(
        "--profiles", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000]
    )
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.rss_child:
        rss_child(os.environ["DCE_TEST_DATABASE_URL"], ns.rss_child)
    else:
        asyncio.run(main(ns))
