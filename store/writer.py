"""The CDR writer: takes CDRs off the call path and gets each into ``cdrs`` exactly once.

Theory of operation
-------------------
``submit(cdr)`` only appends to an in-memory queue (never awaits, never raises). One
background task drains the queue in batches: when 100 rows are waiting, or 200 ms after the
first one arrived, or on ``flush()``/``close()``. A batch is written on one dedicated
connection as::

    COPY records -> temp table cdrs_staging (ON COMMIT DELETE ROWS)
    INSERT INTO cdrs SELECT ... FROM cdrs_staging ON CONFLICT DO NOTHING

in one transaction, so re-sending a batch (its commit was in doubt, or it comes back from the
spool) never writes a CDR twice: (call_id, received_at) is the key and a CDR keeps both.

Every CDR is cleaned when it is submitted (store/cdrtext.py: invalid UTF-8, NUL and control
characters escaped, over-long values cut, by one documented rule), so no path below can fail
because of what a peer sent. Failures are sorted into two kinds:

* the database is unreachable or unwell (refused, reset, timeout - each write runs under
  ``asyncio.timeout`` - or any error that is not about the data): the rows not yet committed
  are appended to the spool, the writer marks the database down and stops trying it until a
  backoff expires (0.5 s doubling to 10 s, or sooner when ``retry_now()`` says it is back).
  Meanwhile every batch goes straight to the spool. When the backoff expires, replaying the
  spool (oldest file first) is the probe; a spool file is deleted only after all its rows are
  committed.
* the data is wrong (SQLSTATE class 22, 23 or 54, or a row that cannot be encoded - after
  cleaning, only our own bugs such as a float for money): the month's partition is created if
  that was the problem, else the batch is split in halves until the bad row stands alone
  (bisection: a handful of round trips for one bad row in a thousand), so one bad row never
  costs another. Each bad row is counted in ``rejected``, logged with its call_id and kept in
  ``rejected.jsonl`` (never replayed automatically, never lost).

Spool: ``spool_dir/spool-<ns>-<pid>-<seq>.jsonl``, one msgspec-encoded Cdr per line, appended
with ``os.write`` and fsynced per batch on the loop thread (only during an outage, and small),
rotated at 4 MiB. Leftover files from an earlier run are replayed at start. An flock on
``spool_dir/.lock`` keeps two writers off one spool. Memory is bounded: past ``max_queue``
queued rows, ``submit`` moves the whole queue to the spool.

Disk full (or any write error) while the database is down: the torn tail is cut off the spool
file and the rows are held in memory, retried on the database's backoff (database first, then
the disk). Up to ``max_queue`` rows are held; past that the oldest are dropped, logged and
counted in ``lost``.

What can be lost: rows still in memory when the process is SIGKILLed (at most ~200 ms of
calls, or the backlog of an unreachable database not yet spooled), and rows that neither the
database nor the disk would take (past the memory bound, or still held at ``close()``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
import msgspec

from store.cdr import Cdr
from store.cdrs import CDR_COLUMNS, cdr_record
from store.cdrtext import clean_cdr
from store.database import Store, create_partitions, month_of
from store.dirlock import try_lock
from store.errors import CdrWriterError

logger = logging.getLogger(__name__)

_COLS = ", ".join(CDR_COLUMNS)
_STAGING_SQL = "CREATE TEMP TABLE IF NOT EXISTS cdrs_staging (LIKE cdrs) ON COMMIT DELETE ROWS"
_INSERT_SQL = f"INSERT INTO cdrs ({_COLS}) SELECT {_COLS} FROM cdrs_staging ON CONFLICT DO NOTHING"
_SPOOL_GLOB = "spool-*.jsonl"
_REJECTED = "rejected.jsonl"

# Seconds from a call's end to its committed row: a healthy writer is under 0.5 s (the 200 ms
# batching); the long tail is an outage drained from the spool.
COMMIT_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# Seconds per committed batch (COPY + INSERT + COMMIT, and the connect when there was none).
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Observations in fixed buckets, as plain numbers (dce/metrics.py renders them)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations at most that), ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class _Rejected(msgspec.Struct, kw_only=True):
    """A line of rejected.jsonl: why, and the CDR (or the raw spool line that did not decode)."""

    reason: str
    cdr: Cdr | None = None
    raw: str | None = None


def _is_data_error(exc: BaseException) -> bool:
    """True when the rows are at fault, not the database: retrying them cannot help."""
    if isinstance(exc, asyncpg.PostgresError):
        # 22 data exception, 23 integrity constraint, 54 program limit (e.g. an index row
        # too large): the same rows fail the same way however often they are sent.
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in ("22", "23", "54")
    # asyncpg's client-side encoding errors are ValueErrors (DataError); ours are TypeErrors.
    return isinstance(exc, ValueError | TypeError)


def _is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition" in str(exc)


class CdrWriter:
    """Batches CDRs into PostgreSQL, spooling to disk while the database is unreachable.

    Counters for /metrics: ``written`` (rows inserted), ``duplicates`` (rows already present),
    ``spooled`` (rows appended to the spool), ``replayed`` (rows committed from the spool,
    re-sends included), ``rejected`` (rows kept in rejected.jsonl), ``lost`` (rows neither the
    database nor the disk took), ``failed`` (rejected + lost), ``batches`` (committed
    batches); histograms ``commit_delay`` (per row, end of call to commit) and
    ``batch_seconds`` (per committed batch).
    """

    def __init__(
        self,
        store_or_dsn: Store | str,
        spool_dir: Path,
        *,
        schema: str | None = None,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        max_batch: int = 1000,
        max_queue: int = 50_000,
        timeout: float = 5.0,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        spool_file_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._store = store_or_dsn if isinstance(store_or_dsn, Store) else None
        self._dsn = store_or_dsn if isinstance(store_or_dsn, str) else None
        self._schema = schema
        self.spool_dir = Path(spool_dir)
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_batch = max(max_batch, batch_size)
        self._max_queue = max_queue
        self._timeout = timeout
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._spool_file_bytes = spool_file_bytes

        # Called with the call ids of CDRs now committed or spooled (the call journal).
        self.on_durable: Callable[[list[str]], None] | None = None
        self.written = 0
        self.duplicates = 0
        self.spooled = 0
        self.replayed = 0
        self.rejected = 0
        self.lost = 0
        self.batches = 0
        self.commit_delay = Histogram(COMMIT_DELAY_BUCKETS)
        self.batch_seconds = Histogram(BATCH_BUCKETS)

        self._queue: deque[Cdr] = deque()
        self._held: deque[Cdr] = deque()  # neither committed nor spooled: the disk refused them
        self._first_at: float | None = None  # monotonic time the oldest queued row arrived
        self._submitted = 0
        self._handled = 0  # rows committed, spooled, held or rejected; flush() waits on this
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._force = False
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._db_ok = True
        self._down_since: float | None = None
        self._last_error: str | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._disk_error: str | None = None

        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Cdr)
        self._lock_fd: int | None = None
        self._spool_fd: int | None = None
        self._spool_path: Path | None = None
        self._spool_size = 0
        self._spool_seq = 0
        self._spool_rows: dict[Path, int] = {}  # spool file -> rows in it, not yet replayed

    # -- public API --------------------------------------------------------------------------

    @property
    def failed(self) -> int:
        """Rows that did not reach the database: rejected (kept aside) plus lost."""
        return self.rejected + self.lost

    @property
    def queued(self) -> int:
        """Rows waiting in memory: queued for the next batch, or held while the disk fails."""
        return len(self._queue) + len(self._held)

    @property
    def spool_rows(self) -> int:
        """Rows in spool files on disk, waiting to be replayed."""
        return sum(self._spool_rows.values())

    @property
    def spool_backlog(self) -> int:
        """Spool files not yet replayed."""
        return len(self._spool_rows)

    @property
    def db_ok(self) -> bool:
        """False while the database is considered unreachable."""
        return self._db_ok

    @property
    def down_since(self) -> float | None:
        """``time.monotonic()`` when the database was last found unreachable; None while ok."""
        return self._down_since

    @property
    def last_error(self) -> str | None:
        """Why the database was last found unreachable (``Type: message``)."""
        return self._last_error

    @property
    def disk_error(self) -> str | None:
        """Why the spool last failed to take rows, while rows are held in memory; else None."""
        return self._disk_error if self._held else None

    def retry_now(self) -> None:
        """The database is known to be back (e.g. a health probe): retry without waiting out
        the backoff."""
        if not self._db_ok:
            self._retry_at = 0.0
            self._wake.set()

    async def start(self) -> None:
        """Lock the spool dir and start the background task (which first replays old spool)."""
        if self._task is not None:
            return
        if self._store is not None:
            self._dsn = self._store.dsn
            self._schema = self._store.schema
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_spool_dir()
        for path in self.spool_dir.glob(_SPOOL_GLOB):
            try:
                self._spool_rows[path] = path.read_bytes().count(b"\n")
            except OSError:
                self._spool_rows[path] = 0  # the replay will say what is wrong with it
        if self._spool_rows:
            logger.warning(
                "%d CDR spool file(s) left by an earlier run (%d CDRs): replaying",
                len(self._spool_rows),
                self.spool_rows,
            )
        self._task = asyncio.create_task(self._run(), name="cdr-writer")

    def submit(self, cdr: Cdr, *, escaped: bool = False, cleaned: bool = False) -> None:
        """Queue one CDR. Synchronous, never blocks on the database, never raises.

        ``escaped``: the CDR was cleaned already (``clean_cdr``): nothing is escaped twice.
        ``cleaned``: it is the very output of ``clean_cdr`` (the pump's), which a second
        pass would return unchanged: skip it.
        """
        try:
            self._submitted += 1
            try:
                if not cleaned:
                    cdr = clean_cdr(cdr, escaped=escaped)
            except Exception:
                # Our bug: write the row as it is; if it cannot be stored it is rejected.
                call_id = _loggable(getattr(cdr, "call_id", None))
                logger.exception("cleaning a CDR failed", extra={"call_id": call_id})
            if self._closed:
                # After close() there is no task: keep the row durable for the next run.
                if not self._spool([cdr]):
                    self._lose([cdr], "the writer is closed and the spool refused it")
                self._close_spool_file()
                self._handled += 1
                return
            queue = self._queue
            if len(queue) >= self._max_queue:
                spill = [*queue, cdr]
                queue.clear()
                self._first_at = None
                logger.warning("CDR queue reached %d rows: moving them to the spool", len(spill))
                if not self._spool(spill):
                    self._hold(spill)
                else:
                    self._durable(spill)
                self._handled += len(spill)
                self._progress.set()
                return
            queue.append(cdr)
            n = len(queue)
            if n == 1:
                self._first_at = time.monotonic()
                self._wake.set()
            elif n == self._batch_size:
                self._wake.set()
        except Exception:
            # Edge of the call path: never let CDR bookkeeping break a call; count it and
            # say which call.
            self.lost += 1
            logger.exception(
                "CDR submit failed", extra={"call_id": _loggable(getattr(cdr, "call_id", None))}
            )

    async def flush(self) -> None:
        """Return once every CDR submitted so far is committed, spooled or rejected (or held
        in memory because the disk refused it)."""
        target = self._submitted
        if self._task is None or self._task.done():
            await self._cycle(force=True)
            return
        while self._handled < target and not self._task.done():
            self._progress.clear()
            self._force = True
            self._wake.set()
            await self._progress.wait()

    async def close(self, timeout: float = 30.0) -> None:
        """Drain the queue (to the database, else the spool), try the spool once, stop.

        Past ``timeout`` the task is cancelled and what is left in memory is spooled.
        """
        if self._closed:
            return
        self._closing = True
        self._force = True
        self._wake.set()
        try:
            if self._task is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._task)
                except TimeoutError:
                    logger.error("CDR writer not drained within %.0f s: spooling the rest", timeout)
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
            else:
                await self._cycle(force=True)
        finally:
            rest = [*self._held, *self._queue]
            handled_before = len(self._held)
            self._held.clear()
            self._queue.clear()
            if rest and not self._spool(rest):
                self._lose(rest, "the database and the spool both refused them at shutdown")
            else:
                self._durable(rest)
            self._handled += len(rest) - handled_before
            self._closed = True
            self._progress.set()
            self._close_spool_file()
            self._drop_conn()
            self._unlock_spool_dir()
        logger.info(
            "CDR writer closed",
            extra={
                "written": self.written,
                "spooled": self.spooled,
                "replayed": self.replayed,
                "failed": self.failed,
                "rejected": self.rejected,
                "lost": self.lost,
                "spool_backlog": len(self._spool_rows),
                "spool_rows": self.spool_rows,
            },
        )

    # -- the background task -----------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while True:
            if not first:
                await self._wait_for_work()
            closing = self._closing  # read before the cycle: close() may come during it
            try:
                await self._cycle(force=first or self._force)
            except Exception:
                # Task edge: a bug must not stop CDR writing; rows already taken are spooled.
                logger.exception("CDR writer cycle failed")
                await asyncio.sleep(self._retry_min)
            first = False
            if closing and not self._queue:
                return

    async def _wait_for_work(self) -> None:
        while True:
            if self._force or self._closing:
                return
            now = time.monotonic()
            delay: float | None
            if self._queue:
                if len(self._queue) >= self._batch_size or self._first_at is None:
                    return
                delay = self._first_at + self._interval - now
            elif self._spool_rows or self._held:
                delay = 0.0 if self._db_ok else self._retry_at - now
            else:
                delay = None
            if delay is not None and delay <= 0:
                return
            # Clear, then wait: every condition above was read after the clear's last set.
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _cycle(self, *, force: bool) -> None:
        """Replay the spool if the database may be back, retry held rows, drain the queue."""
        self._force = False
        closing = self._closing
        if self._spool_rows and (self._db_ok or force or self._retry_due()):
            await self._replay()
            force = False
        if self._held:
            # Counted as handled when they were first held: only find them a place now.
            held = list(self._held)
            self._held.clear()
            for i in range(0, len(held), self._max_batch):
                chunk = held[i : i + self._max_batch]
                attempt = self._db_ok or force or self._retry_due()
                force = False
                try:
                    left = await self._write(chunk) if attempt else chunk
                except BaseException:
                    self._hold(chunk)
                    raise
                if left and not self._spool(left):
                    self._hold(left)
                    self._durable([c for c in chunk if c not in left])
                else:
                    self._durable(chunk)
        while self._queue:
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            if not self._queue:
                self._first_at = None
            attempt = self._db_ok or force or self._retry_due()
            force = False
            try:
                left = await self._write(batch) if attempt else batch
            except BaseException:
                # Cancelled mid-write (close timeout): the batch may or may not be committed;
                # spooling it is safe either way since a replay cannot duplicate.
                if not self._spool(batch):
                    self._hold(batch)
                self._handled += len(batch)
                self._progress.set()
                raise
            if left and not self._spool(left):
                self._hold(left)
                self._durable([c for c in batch if c not in left])
            else:
                self._durable(batch)
            self._handled += len(batch)
            self._progress.set()
            if not (closing or self._force or len(self._queue) >= self._batch_size):
                # Rows that arrived during the write wait for a full batch or the interval:
                # draining them at once would write a handful of rows per round trip.
                break
        if closing and self._spool_rows and self._db_ok:
            await self._replay()  # final attempt, so a clean shutdown leaves no spool behind
        self._progress.set()

    def _retry_due(self) -> bool:
        return time.monotonic() >= self._retry_at

    # -- database ----------------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            if self._dsn is None and self._store is not None:
                self._dsn, self._schema = self._store.dsn, self._store.schema
            if self._dsn is None:
                raise CdrWriterError("no database to write to")
            settings = {"application_name": "dce-cdr-writer"}
            if self._schema is not None:
                settings["search_path"] = self._schema
            conn = await asyncpg.connect(self._dsn, server_settings=settings)
            try:
                await conn.execute(_STAGING_SQL)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            self._conn.terminate()  # never awaits: the link may be dead
            self._conn = None

    async def _insert(self, rows: Sequence[tuple[object, ...]]) -> int:
        """Write rows in one transaction; returns how many were new."""
        conn = await self._connection()
        async with conn.transaction():
            await conn.copy_records_to_table("cdrs_staging", records=rows, columns=CDR_COLUMNS)
            status = await conn.execute(_INSERT_SQL)
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <n>"

    async def _write(self, batch: Sequence[Cdr]) -> list[Cdr]:
        """Commit a batch; returns the rows left unwritten because the database is
        unreachable (the caller spools them). Bad rows are rejected, never returned."""
        pairs: list[tuple[Cdr, tuple[object, ...]]] = []
        for cdr in batch:
            try:
                pairs.append((cdr, cdr_record(cdr)))
            except Exception as exc:
                self._reject(cdr, f"cannot encode: {exc}")
        if not pairs:
            return []
        return await self._write_pairs(pairs)

    async def _write_pairs(self, pairs: Sequence[tuple[Cdr, tuple[object, ...]]]) -> list[Cdr]:
        """Commit rows in one transaction; on a data error, bisect until the bad rows stand
        alone and reject them. Returns the rows not written because the database failed."""
        try:
            await self._commit(pairs)
        except Exception as exc:
            if not _is_data_error(exc):
                self._mark_down(exc)
                return [cdr for cdr, _ in pairs]
            if len(pairs) == 1:
                self._reject(pairs[0][0], f"{type(exc).__name__}: {exc}")
                return []
            mid = len(pairs) // 2
            left = await self._write_pairs(pairs[:mid])
            if left:
                return [*left, *(cdr for cdr, _ in pairs[mid:])]
            return await self._write_pairs(pairs[mid:])
        except BaseException:
            self._drop_conn()  # cancelled mid-protocol: the connection state is unknown
            raise
        return []

    async def _commit(self, pairs: Sequence[tuple[Cdr, tuple[object, ...]]]) -> None:
        rows = [row for _, row in pairs]
        t0 = time.perf_counter()
        async with asyncio.timeout(self._timeout):
            try:
                inserted = await self._insert(rows)
            except asyncpg.CheckViolationError as exc:
                if not _is_missing_partition(exc):
                    raise
                months = {month_of(cdr.received_at) for cdr, _ in pairs}
                await create_partitions(await self._connection(), months, self._schema)
                inserted = await self._insert(rows)
        self.batch_seconds.observe(time.perf_counter() - t0)
        now = time.time()
        observe = self.commit_delay.observe
        for cdr, _ in pairs:
            with contextlib.suppress(AttributeError, OverflowError, OSError, ValueError):
                observe(max(0.0, now - cdr.ended_at.timestamp()))
        self._count(len(rows), inserted)

    def _count(self, rows: int, inserted: int) -> None:
        self.written += inserted
        self.duplicates += rows - inserted
        self.batches += 1
        if not self._db_ok:
            logger.warning("database reachable again: CDR writes resumed")
        self._db_ok = True
        self._down_since = None
        self._backoff = 0.0

    def _mark_down(self, exc: BaseException) -> None:
        self._drop_conn()
        self._backoff = min(self._retry_max, max(self._retry_min, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        self._last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self._db_ok:
            self._down_since = time.monotonic()
            logger.warning(
                "database unreachable (%s): spooling CDRs to %s",
                self._last_error,
                self.spool_dir,
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("database still unreachable: %s", exc)
        self._db_ok = False

    def _reject(self, cdr: Cdr | None, reason: str, raw: bytes | None = None) -> None:
        """Keep a row the database refused in rejected.jsonl; never raises."""
        self.rejected += 1
        call_id = _loggable(getattr(cdr, "call_id", None))
        logger.error("CDR rejected: %s", _loggable(reason), extra={"call_id": call_id})
        try:
            line = self._encoder.encode(
                _Rejected(reason=reason, cdr=cdr, raw=raw.decode(errors="replace") if raw else None)
            )
        except Exception:
            # A row that cannot be encoded at all (our bug): keep its repr, which always can.
            line = self._encoder.encode(_Rejected(reason=repr(reason), raw=repr(cdr)))
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spool_dir / _REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            logger.exception("cannot keep the rejected CDR", extra={"call_id": call_id})

    def _lose(self, rows: Sequence[Cdr], why: str) -> None:
        self.lost += len(rows)
        logger.error(
            "%d CDRs lost: %s",
            len(rows),
            why,
            extra={"call_id": rows[0].call_id if rows else None},
        )

    # -- spool -------------------------------------------------------------------------------

    def _encode_lines(self, batch: Sequence[Cdr]) -> tuple[bytes, int]:
        """The spool lines of a batch and how many rows they hold. A row that cannot be
        encoded (our bug; cleaned text always can) is rejected rather than failing the rest."""
        try:
            return self._encoder.encode_lines(batch), len(batch)
        except Exception:
            parts: list[bytes] = []
            for cdr in batch:
                try:
                    parts.append(self._encoder.encode(cdr) + b"\n")
                except Exception as exc:
                    self._reject(cdr, f"cannot encode for the spool: {exc}")
            return b"".join(parts), len(parts)

    def _durable(self, rows: Sequence[Cdr]) -> None:
        """Tell ``on_durable`` which calls' CDRs are now committed or on disk (the call
        journal then forgets them: dce/journal.py). Never raises."""
        hook = self.on_durable
        if hook is None or not rows:
            return
        try:
            hook([c.call_id for c in rows])
        except Exception:
            logger.exception("on_durable hook failed")

    def _spool(self, batch: Sequence[Cdr]) -> bool:
        """Append rows to the current spool file and fsync. False: the disk refused them
        (full, read-only ...); the file is cut back to its last whole line. Never raises."""
        if not batch:
            return True
        data, n = self._encode_lines(batch)
        if not n:
            return True
        try:
            if self._spool_fd is None:
                self._open_spool_file()
            assert self._spool_fd is not None and self._spool_path is not None
            try:
                _write_all(self._spool_fd, data)
                os.fsync(self._spool_fd)
            except OSError:
                # Cut a torn tail off, so the file holds whole lines only (its rows are
                # held and will be written, so a torn line must not be rejected later).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._spool_fd, self._spool_size)
                raise
            self._spool_size += len(data)
            self._spool_rows[self._spool_path] = self._spool_rows.get(self._spool_path, 0) + n
            self.spooled += n
            if self._spool_size >= self._spool_file_bytes:
                self._close_spool_file()
        except Exception as exc:
            self._close_spool_file()
            if self._disk_error is None or not self._held:
                logger.error(
                    "cannot spool %d CDRs (%s: %s): holding them in memory",
                    n,
                    type(exc).__name__,
                    exc,
                    extra={"call_id": batch[0].call_id},
                )
            self._disk_error = f"{type(exc).__name__}: {exc}"[:300]
            return False
        return True

    def _hold(self, rows: Sequence[Cdr]) -> None:
        """Keep rows in memory that neither the database nor the disk took; bounded."""
        self._held.extend(rows)
        over = len(self._held) - self._max_queue
        if over > 0:
            dropped = [self._held.popleft() for _ in range(over)]
            self._lose(dropped, f"database and spool both failing, over {self._max_queue} held")

    def _open_spool_file(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)  # close() without start()
        self._spool_seq += 1
        name = f"spool-{time.time_ns():020d}-{os.getpid()}-{self._spool_seq:06d}.jsonl"
        path = self.spool_dir / name
        self._spool_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._spool_path = path
        self._spool_size = 0
        self._spool_rows[path] = 0
        # The new name must survive a crash too, not just the bytes.
        dfd = os.open(self.spool_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _close_spool_file(self) -> None:
        if self._spool_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._spool_fd)
            self._spool_fd = None
            path = self._spool_path
            self._spool_path = None
            if path is not None and self._spool_rows.get(path) == 0:
                # Opened, but nothing made it in (the disk refused): not a spool file.
                with contextlib.suppress(OSError):
                    path.unlink()
                del self._spool_rows[path]

    async def _replay(self) -> bool:
        """Replay spool files oldest first; False when the database failed on the way."""
        self._close_spool_file()  # the current file is replayed too; new rows start a new one
        for path in sorted(self._spool_rows, key=lambda p: p.name):
            if not await self._replay_file(path):
                return False
        return True

    async def _replay_file(self, path: Path) -> bool:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._spool_rows.pop(path, None)
            return True
        cdrs: list[Cdr] = []
        bad: list[bytes] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                # Cleaned before it was spooled; cleaning again (backslashes already escapes)
                # only matters for a line written by an older version or by hand.
                cdrs.append(clean_cdr(self._decoder.decode(line), escaped=True))
            except msgspec.DecodeError:
                bad.append(line)  # e.g. the torn last line of a crash mid-write
        for i in range(0, len(cdrs), self._max_batch):
            chunk = cdrs[i : i + self._max_batch]
            if await self._write(chunk):
                return False  # the database went away again; the whole file stays
            self.replayed += len(chunk)
        for line in bad:
            self._reject(None, "undecodable spool line", raw=line)
        path.unlink(missing_ok=True)
        self._spool_rows.pop(path, None)
        logger.info("replayed spool file %s (%d CDRs)", path.name, len(cdrs))
        return True

    def _lock_spool_dir(self) -> None:
        fd = try_lock(self.spool_dir / ".lock")
        if fd is None:
            raise CdrWriterError(f"spool dir {self.spool_dir} is used by another writer")
        self._lock_fd = fd

    def _unlock_spool_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _loggable(value: object) -> str | None:
    """A value for a JSON log line: cleaned text as it is, anything else (our bug) as ascii()."""
    if value is None:
        return None
    if isinstance(value, str) and _SURROGATE.search(value) is None:
        return value  # the JSON log encoder takes any str but a lone surrogate
    return ascii(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
