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

Failures are sorted into two kinds:

* the database is unreachable or unwell (refused, reset, timeout - each write runs under
  ``asyncio.timeout`` - or any error that is not about the data): the batch is appended to
  the spool, the writer marks the database down and stops trying it until a backoff expires
  (0.5 s doubling to 10 s). Meanwhile every batch goes straight to the spool. When the
  backoff expires, replaying the spool (oldest file first) is the probe; a spool file is
  deleted only after all its rows are committed.
* the data is wrong (SQLSTATE class 22/23, or a row that cannot be encoded): the month's
  partition is created if that was the problem, else the batch is retried row by row and each
  bad row is counted in ``failed``, logged with its call_id and kept in ``rejected.jsonl``
  (never replayed automatically, never lost).

Spool: ``spool_dir/spool-<ns>-<pid>-<seq>.jsonl``, one msgspec-encoded Cdr per line, appended
with ``os.write`` and fsynced per batch on the loop thread (only during an outage, and small),
rotated at 4 MiB. Leftover files from an earlier run are replayed at start. An flock on
``spool_dir/.lock`` keeps two writers off one spool. Memory is bounded: past ``max_queue``
queued rows, ``submit`` moves the whole queue to the spool.

What can be lost: rows still in memory when the process is SIGKILLed (at most ~200 ms of
calls, or the backlog of an unreachable database not yet spooled), and rows the disk refuses
while the database is also down (logged and counted in ``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec

from store.cdr import Cdr
from store.cdrs import CDR_COLUMNS, cdr_record
from store.database import Store, create_partitions, month_of
from store.dirlock import try_lock
from store.errors import CdrWriterError

logger = logging.getLogger(__name__)

_COLS = ", ".join(CDR_COLUMNS)
_STAGING_SQL = "CREATE TEMP TABLE IF NOT EXISTS cdrs_staging (LIKE cdrs) ON COMMIT DELETE ROWS"
_INSERT_SQL = f"INSERT INTO cdrs ({_COLS}) SELECT {_COLS} FROM cdrs_staging ON CONFLICT DO NOTHING"
_SPOOL_GLOB = "spool-*.jsonl"
_REJECTED = "rejected.jsonl"


class _Rejected(msgspec.Struct, kw_only=True):
    """A line of rejected.jsonl: why, and the CDR (or the raw spool line that did not decode)."""

    reason: str
    cdr: Cdr | None = None
    raw: str | None = None


def _is_data_error(exc: BaseException) -> bool:
    """True when the rows are at fault, not the database: retrying them cannot help."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in ("22", "23")
    # asyncpg's client-side encoding errors are ValueErrors (DataError); ours are TypeErrors.
    return isinstance(exc, ValueError | TypeError)


def _is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition" in str(exc)


class CdrWriter:
    """Batches CDRs into PostgreSQL, spooling to disk while the database is unreachable.

    Counters for /metrics: ``written`` (rows inserted), ``duplicates`` (rows already present),
    ``spooled`` (rows appended to the spool), ``replayed`` (rows committed from the spool,
    re-sends included), ``failed`` (rows rejected or lost), ``batches`` (committed batches).
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

        self.written = 0
        self.duplicates = 0
        self.spooled = 0
        self.replayed = 0
        self.failed = 0
        self.batches = 0

        self._queue: deque[Cdr] = deque()
        self._first_at: float | None = None  # monotonic time the oldest queued row arrived
        self._submitted = 0
        self._handled = 0  # rows committed, spooled or rejected; flush() waits on this
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._force = False
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._db_ok = True
        self._backoff = 0.0
        self._retry_at = 0.0

        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Cdr)
        self._lock_fd: int | None = None
        self._spool_fd: int | None = None
        self._spool_size = 0
        self._spool_seq = 0
        self._spool_paths: set[Path] = set()

    # -- public API --------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Rows waiting in memory."""
        return len(self._queue)

    @property
    def spool_backlog(self) -> int:
        """Spool files not yet replayed."""
        return len(self._spool_paths)

    @property
    def db_ok(self) -> bool:
        """False while the database is considered unreachable."""
        return self._db_ok

    async def start(self) -> None:
        """Lock the spool dir and start the background task (which first replays old spool)."""
        if self._task is not None:
            return
        if self._store is not None:
            self._dsn = self._store.dsn
            self._schema = self._store.schema
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_spool_dir()
        self._spool_paths = set(self.spool_dir.glob(_SPOOL_GLOB))
        if self._spool_paths:
            logger.warning(
                "%d CDR spool file(s) left by an earlier run: replaying", len(self._spool_paths)
            )
        self._task = asyncio.create_task(self._run(), name="cdr-writer")

    def submit(self, cdr: Cdr) -> None:
        """Queue one CDR. Synchronous, never blocks on the database, never raises."""
        try:
            self._submitted += 1
            if self._closed:
                # After close() there is no task: keep the row durable for the next run.
                self._spool([cdr])
                self._close_spool_file()
                self._handled += 1
                return
            queue = self._queue
            if len(queue) >= self._max_queue:
                spill = [*queue, cdr]
                queue.clear()
                self._first_at = None
                logger.warning("CDR queue reached %d rows: moving them to the spool", len(spill))
                self._spool(spill)
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
            # The SIP path must never see a CDR problem; count it and say which call.
            self.failed += 1
            logger.exception("CDR submit failed", extra={"call_id": getattr(cdr, "call_id", None)})

    async def flush(self) -> None:
        """Return once every CDR submitted so far is committed or spooled (or rejected)."""
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
            if self._queue:
                rest = list(self._queue)
                self._queue.clear()
                self._spool(rest)
                self._handled += len(rest)
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
                "spool_backlog": len(self._spool_paths),
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
            elif self._spool_paths:
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
        """Replay the spool if the database may be back, then drain the whole queue."""
        self._force = False
        closing = self._closing
        if self._spool_paths and (self._db_ok or force or self._retry_due()):
            await self._replay()
            force = False
        while self._queue:
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            if not self._queue:
                self._first_at = None
            attempt = self._db_ok or force or self._retry_due()
            force = False
            try:
                ok = attempt and await self._write(batch)
            except BaseException:
                # Cancelled mid-write (close timeout): the batch may or may not be committed;
                # spooling it is safe either way since a replay cannot duplicate.
                self._spool(batch)
                self._handled += len(batch)
                self._progress.set()
                raise
            if not ok:
                self._spool(batch)
            self._handled += len(batch)
            self._progress.set()
            if not (closing or self._force or len(self._queue) >= self._batch_size):
                # Rows that arrived during the write wait for a full batch or the interval:
                # draining them at once would write a handful of rows per round trip.
                break
        if closing and self._spool_paths and self._db_ok:
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

    async def _write(self, batch: Sequence[Cdr]) -> bool:
        """Commit a batch. False: the database is unreachable (the caller spools the batch)."""
        rows: list[tuple[object, ...]] = []
        good: list[Cdr] = []
        for cdr in batch:
            try:
                rows.append(cdr_record(cdr))
                good.append(cdr)
            except Exception as exc:
                self._reject(cdr, f"cannot encode: {exc}")
        if not rows:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    inserted = await self._insert(rows)
                except asyncpg.CheckViolationError as exc:
                    if not _is_missing_partition(exc):
                        raise
                    months = {month_of(c.received_at) for c in good}
                    await create_partitions(await self._connection(), months, self._schema)
                    inserted = await self._insert(rows)
        except Exception as exc:
            if _is_data_error(exc):
                return await self._write_rows_singly(good, rows)
            self._mark_down(exc)
            return False
        except BaseException:
            self._drop_conn()  # cancelled mid-protocol: the connection state is unknown
            raise
        self._count(len(rows), inserted)
        return True

    async def _write_rows_singly(
        self, batch: Sequence[Cdr], rows: Sequence[tuple[object, ...]]
    ) -> bool:
        """A batch with a bad row: write rows one by one and reject the bad ones."""
        for cdr, row in zip(batch, rows, strict=True):
            try:
                async with asyncio.timeout(self._timeout):
                    inserted = await self._insert([row])
            except Exception as exc:
                if _is_data_error(exc):
                    self._reject(cdr, f"{type(exc).__name__}: {exc}")
                    continue
                self._mark_down(exc)
                return False  # the whole batch is spooled; rows written so far dedupe
            self._count(1, inserted)
        return True

    def _count(self, rows: int, inserted: int) -> None:
        self.written += inserted
        self.duplicates += rows - inserted
        self.batches += 1
        if not self._db_ok:
            logger.warning("database reachable again: CDR writes resumed")
        self._db_ok = True
        self._backoff = 0.0

    def _mark_down(self, exc: BaseException) -> None:
        self._drop_conn()
        self._backoff = min(self._retry_max, max(self._retry_min, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        if self._db_ok:
            logger.warning(
                "database unreachable (%s: %s): spooling CDRs to %s",
                type(exc).__name__,
                exc,
                self.spool_dir,
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("database still unreachable: %s", exc)
        self._db_ok = False

    def _reject(self, cdr: Cdr | None, reason: str, raw: bytes | None = None) -> None:
        self.failed += 1
        call_id = cdr.call_id if cdr is not None else None
        logger.error("CDR rejected: %s", reason, extra={"call_id": call_id})
        line = self._encoder.encode(
            _Rejected(reason=reason, cdr=cdr, raw=raw.decode(errors="replace") if raw else None)
        )
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

    # -- spool -------------------------------------------------------------------------------

    def _spool(self, batch: Sequence[Cdr]) -> None:
        """Append rows to the current spool file and fsync; never raises."""
        if not batch:
            return
        try:
            data = self._encoder.encode_lines(batch)
            if self._spool_fd is None:
                self._open_spool_file()
            assert self._spool_fd is not None
            _write_all(self._spool_fd, data)
            os.fsync(self._spool_fd)
            self._spool_size += len(data)
            self.spooled += len(batch)
            if self._spool_size >= self._spool_file_bytes:
                self._close_spool_file()
        except Exception:
            # Database and disk both failing: nothing left to hold the rows. Say so loudly.
            self.failed += len(batch)
            logger.exception(
                "cannot spool %d CDRs: they are lost",
                len(batch),
                extra={"call_id": batch[0].call_id},
            )
            self._close_spool_file()

    def _open_spool_file(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)  # close() without start()
        self._spool_seq += 1
        name = f"spool-{time.time_ns():020d}-{os.getpid()}-{self._spool_seq:06d}.jsonl"
        path = self.spool_dir / name
        self._spool_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._spool_size = 0
        self._spool_paths.add(path)
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

    async def _replay(self) -> bool:
        """Replay spool files oldest first; False when the database failed on the way."""
        self._close_spool_file()  # the current file is replayed too; new rows start a new one
        for path in sorted(self._spool_paths, key=lambda p: p.name):
            if not await self._replay_file(path):
                return False
        return True

    async def _replay_file(self, path: Path) -> bool:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._spool_paths.discard(path)
            return True
        cdrs: list[Cdr] = []
        bad: list[bytes] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                cdrs.append(self._decoder.decode(line))
            except msgspec.DecodeError:
                bad.append(line)  # e.g. the torn last line of a crash mid-write
        for i in range(0, len(cdrs), self._max_batch):
            chunk = cdrs[i : i + self._max_batch]
            if not await self._write(chunk):
                return False
            self.replayed += len(chunk)
        for line in bad:
            self._reject(None, "undecodable spool line", raw=line)
        path.unlink(missing_ok=True)
        self._spool_paths.discard(path)
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
