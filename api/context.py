"""What every handler is given: the store, the compliance gate, the clock, the locks.

Writes to exchange objects are serialised by ``exchange_lock``: ``changing()`` yields what is
stored, and after the write commits runs ``on_change()`` still under the lock, so the switch
reloads snapshots in commit order and the next call sees the change. Compliance routes change
the gate's in-memory stores in place (the gate reads them on every call, so there is nothing
to reload); DNC imports and erasures take ``compliance_lock``, and ``dnc_versions`` records
the stored version of each DNC list they put in the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from api.errors import ApiError
from compliance.check import Gate
from exchange.models import ExchangeConfig
from store.database import Store

if TYPE_CHECKING:
    from api.live import LiveSource

__all__ = ["ApiContext"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """The state the handlers share; built once by ``build_api`` (see its arguments)."""

    store: Store
    on_change: Callable[[], Awaitable[None]]
    gate: Gate
    wall: Callable[[], datetime]
    # Each DNC list's stored version, as held in ``gate.dnc`` (shared with dce/sync.py).
    dnc_versions: dict[str, int]
    dnc_max_bytes: int
    flush_cdrs: Callable[[], Awaitable[None]] | None
    # An endpoint URI -> its health as the switch's probes see it (api.models.EndpointHealth
    # fields); None: no switch behind this API (endpoints read as not probed).
    endpoint_health: Callable[[str], Mapping[str, Any]] | None = None
    # The running switch's live calls (api/live.py LiveSource); None: no switch, no calls.
    live: LiveSource | None = None
    exchange_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    compliance_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[ExchangeConfig]:
        """Serialise an exchange write: yields what is stored; after the block commits,
        ``on_change()`` runs while the lock is still held."""
        async with self.exchange_lock:
            yield await self.store.exchange.read_config()
            try:
                await self.on_change()
            except Exception as exc:
                logger.exception("the change is stored but the switch did not reload it")
                raise ApiError("the change is stored; reloading it failed") from exc
