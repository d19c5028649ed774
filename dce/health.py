"""What ``/healthz`` answers: 200 when the switch can take calls and keep their CDRs, else 503
with the reasons.

Monitors poll ``/healthz`` often, so an answer costs no database round trip of its own. It is
built from what the CDR writer already knows (is the database down, how many CDRs wait on disk
or in memory) plus one cached probe: at most one ``SELECT 1`` every ``interval`` seconds, on a
pooled connection, under a ``timeout``; concurrent requests share the probe in flight. The
probe is what notices an outage while no call ends (the writer only learns it when it
writes), and when it finds the database back it tells the writer to retry at once instead of
waiting out its backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class WriterState(Protocol):
    """What the health check reads from the CDR writer (store/writer.py CdrWriter)."""

    @property
    def db_ok(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def queued(self) -> int: ...
    @property
    def spool_rows(self) -> int: ...
    @property
    def disk_error(self) -> str | None: ...
    @property
    def rejected(self) -> int: ...
    @property
    def lost(self) -> int: ...

    def retry_now(self) -> None: ...


class DatabaseProbe:
    """A cached, bounded liveness check: ``await probe.ok()`` runs ``check`` at most once per
    ``interval`` seconds, for at most ``timeout`` seconds, and remembers why it failed."""

    def __init__(
        self,
        check: Callable[[], Awaitable[object]],
        *,
        interval: float = 2.0,
        timeout: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._interval = interval
        self._timeout = timeout
        self._monotonic = monotonic
        self._at: float | None = None  # when the cached result was taken
        self._ok = True
        self.error: str | None = None
        self._running: asyncio.Task[None] | None = None
        self.runs = 0
        self._told = 0  # the run whose success was last passed on (new_success)

    async def ok(self) -> bool:
        now = self._monotonic()
        if self._at is not None and now - self._at < self._interval:
            return self._ok
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        # shield: a monitor hanging up must not cancel the probe the others wait on.
        await asyncio.shield(self._running)
        return self._ok

    def new_success(self) -> bool:
        """True once per successful run: act on "the database answers" once, not per poll."""
        if self._ok and self._at is not None and self._told != self.runs:
            self._told = self.runs
            return True
        return False

    async def _run(self) -> None:
        self.runs += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._check()
        except Exception as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            self._ok = False
            self.error = f"{type(exc).__name__}: {reason}"[:300]
        else:
            self._ok = True
            self.error = None
        self._at = self._monotonic()


async def health(
    *,
    started: bool,
    probe: DatabaseProbe | None,
    writer: WriterState | None,
    extra: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of ``/healthz``: 200 ``ok``, else 503 with ``problems``."""
    problems: list[str] = []
    body: dict[str, Any] = {"status": "ok", **extra}
    if not started:
        body["status"] = "starting"
        return 503, body
    db_ok = await probe.ok() if probe is not None else True
    if not db_ok and probe is not None:
        problems.append(f"database unreachable: {probe.error}")
    if writer is not None:
        if db_ok and not writer.db_ok:
            # The writer found it down (the probe may not have looked since); if the probe
            # does answer, the database is back: replay the spool now, not after the backoff.
            problems.append(f"database unreachable: {writer.last_error}")
            if probe is not None and probe.new_success():
                writer.retry_now()
        waiting = writer.spool_rows + writer.queued
        if not writer.db_ok and waiting:
            problems.append(
                f"{waiting} CDRs waiting for the database "
                f"({writer.spool_rows} spooled on disk, {writer.queued} in memory)"
            )
        if writer.disk_error is not None:
            problems.append(f"CDR spool refuses writes: {writer.disk_error}")
        body["cdr"] = {
            "database_ok": writer.db_ok,
            "spooled": writer.spool_rows,
            "in_memory": writer.queued,
            "rejected": writer.rejected,
            "lost": writer.lost,
        }
    if problems:
        body["status"] = "unavailable"
        body["problems"] = problems
        return 503, body
    return 200, body
