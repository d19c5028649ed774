"""Shared state: this instance's in-memory copies kept in step with the database.

Several ``dce run`` instances may share one PostgreSQL (docs/settings.md "Several instances").
Each holds in memory what calls read: the compiled exchange configuration, the consent records,
the erasure suppression entries and the DNC lists. A trigger on every table they come from
(store/migrations/0005_shared_state.sql) bumps a version per kind and sends
``NOTIFY dce_sync '<schema> <kind> <version>'`` in the writing transaction, whoever wrote: an
instance's admin API, ``dce config apply``, ``dce dnc import``, psql.

``SharedState`` LISTENs on a connection of its own and, per kind, a worker task brings memory
up to the notified version:

==========  ==================================================================================
exchange    read the whole configuration with its version, compile it in a worker thread
            (25 ms per 1,000 bid profiles: too long for the event loop), swap it in
consent     the records written after the version held (rows carry their version); an erased
            record (its caller now a hash) moves that caller's records under the hash
erasure     the suppression entries written after the version held, merged into a new set
dnc         the lists whose version differs, each read chunk by chunk in one snapshot, its
            lookup directory built in a worker thread, then swapped in (the gate sees the old
            or the new list, never a mix); lists gone from the database are dropped
==========  ==================================================================================

A version already held is skipped, so the instance whose API made a change (and applied it at
once) does not load it twice, and a notification that arrives late never reverts anything. If
the listening connection drops (a database restart, a network cut), it reconnects with backoff
and then syncs every kind, since notifications sent meanwhile are lost; every ``poll`` seconds
it also reads the versions on that connection, which finds a dead link and any notification
missed for another reason. At start ``load()`` reads everything, so an instance that was down
starts with what changed while it was.

Rows that were deleted cannot be seen by "newer than": such a statement also moves the kind's
``resets`` counter, and a moved counter makes the next sync read the kind whole.

The erasure secret must be the same on every instance (the suppression entries are its
hashes): ``check_erasure_secret`` compares its fingerprint with the one the database recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import asyncpg

from compliance.check import Gate
from compliance.consent import ConsentRecord, ConsentStore
from compliance.erasure import Suppression
from compliance.errors import ConsentInvalid
from exchange.auction_index import AuctionIndex
from exchange.errors import ConfigInvalid
from exchange.models import ExchangeConfig
from store.database import SYNC_CHANNEL, SYNC_KINDS, Store
from store.errors import StoreConflict, StoreError

__all__ = [
    "SECRET_NAME",
    "SecretMismatch",
    "SharedState",
    "check_erasure_secret",
    "erasure_fingerprint",
]

logger = logging.getLogger(__name__)

SECRET_NAME: Final = "erasure_secret"
# What a lost or refused database connection raises.
_LINK_ERRORS: Final = (OSError, TimeoutError, asyncpg.InterfaceError,
                       asyncpg.PostgresConnectionError)  # fmt: skip
_BACKOFF_MAX_S: Final = 5.0  # reconnecting the listener: 0.25 s doubling up to this

ApplyExchange = Callable[[ExchangeConfig, AuctionIndex], None]
Compile = Callable[[ExchangeConfig], AuctionIndex]


class SecretMismatch(StoreError):
    """This instance's erasure secret is not the one the shared database was used with."""


def erasure_fingerprint(secret: bytes) -> str:
    """What the database keeps of the erasure secret: an HMAC of a fixed text, not the key."""
    return hmac.new(secret, b"dce erasure secret fingerprint", hashlib.sha256).hexdigest()


async def check_erasure_secret(store: Store, secret: bytes, where: str) -> None:
    """Record the secret's fingerprint in a database that has none, else insist it matches.

    Raises:
        SecretMismatch: another instance used this database with another secret; ``where``
            says where this one comes from.
    """
    try:
        await store.check_secret(SECRET_NAME, erasure_fingerprint(secret))
    except StoreConflict as exc:
        raise SecretMismatch(
            f"the erasure secret ({where}) is not the one this database was used with: "
            "every instance sharing a database must use the same secret, or callers erased "
            "through one would not stay blocked on another. Copy DCE_DATA_DIR/erasure_secret "
            "from the first instance, or set DCE_ERASURE_SECRET to it on every instance"
        ) from exc


def _parse(payload: str) -> tuple[str, str, int] | None:
    """(schema, kind, version) of a notification, or None if it is not one of ours."""
    parts = payload.split(" ")
    if len(parts) != 3 or parts[1] not in SYNC_KINDS or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def consent_store(records: list[ConsentRecord]) -> ConsentStore:
    """The gate's store of these records. Erased records (their caller is a hash) are left
    out: the gate looks consent up by number, and they can no longer match one."""
    store = ConsentStore()
    for r in records:
        if r.caller.startswith("+"):
            _add_consent(store, r)
    return store


def _add_consent(store: ConsentStore, record: ConsentRecord) -> None:
    try:
        store.add(record)
    except ConsentInvalid:  # written around the API (psql): the other records still count
        logger.error("a stored consent record is invalid; ignored", extra={"id": record.id})


class SharedState:
    """Keeps this instance's exchange config and compliance data equal to the database's.

    Args:
        store: the shared database (migrated).
        gate: the compliance gate whose consent, suppression and DNC stores are replaced.
        erasure_secret: the key of the suppression set (the same on every instance).
        compile: config -> compiled index (pure; run in a worker thread).
        apply_exchange: installs a config and its index (on the event loop).
        poll: seconds between version checks on the listening connection.
    """

    def __init__(
        self,
        store: Store,
        gate: Gate,
        erasure_secret: bytes,
        *,
        compile: Compile,
        apply_exchange: ApplyExchange,
        poll: float = 5.0,
    ) -> None:
        self.store = store
        self.gate = gate
        self._secret = erasure_secret
        self._compile = compile
        self._apply_exchange = apply_exchange
        self._poll = poll
        self.schema = ""
        # What memory holds: the version per kind (-1: nothing loaded yet), and the resets
        # seen for the kinds read by rows.
        self.versions: dict[str, int] = dict.fromkeys(SYNC_KINDS, -1)
        self._resets: dict[str, int] = {}
        # Each stored DNC list's version in the gate; the admin API updates it too when it
        # stores a list itself (api/dnc.py), so the same dict is handed to it.
        self.dnc_versions: dict[str, int] = {}
        self._locks = {kind: asyncio.Lock() for kind in SYNC_KINDS}
        self._wake = {kind: asyncio.Event() for kind in SYNC_KINDS}
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        self.reconnects = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every kind whole (at start, before calls are taken)."""
        self.schema = await self.store.current_schema()
        for kind in SYNC_KINDS:
            await self.sync(kind)

    def start(self) -> None:
        """Listen and keep memory in step, until ``stop()``."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker(kind)) for kind in SYNC_KINDS]
        self._tasks.append(loop.create_task(self._listen()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def state(self) -> dict[str, Any]:
        """For /healthz: listening or not, and the versions held."""
        return {"listening": self.connected, "versions": dict(self.versions)}

    # -- the listening connection ---------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.25
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.store.listener()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(SYNC_CHANNEL, self._notified)
                if not self.connected and self.reconnects:
                    logger.warning("shared state: listening again; syncing everything")
                self.connected = True
                backoff = 0.25
                # Notifications sent while nobody listened are lost: look at every kind.
                self._check(await _versions(conn))
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._poll)
                    if not lost.is_set():
                        # Also proves the link alive: a dead one times out and reconnects.
                        self._check(await asyncio.wait_for(_versions(conn), self._poll))
                raise ConnectionError("the listening connection closed")
            except asyncio.CancelledError:
                raise
            except (*_LINK_ERRORS, asyncpg.PostgresError) as exc:
                if self.connected:
                    logger.warning(
                        "shared state: lost the database's notifications; reconnecting",
                        extra={"error": str(exc) or type(exc).__name__},
                    )
            except Exception:
                logger.exception("shared state: listener failed; reconnecting")
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_MAX_S, backoff * 2)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        parsed = _parse(payload)
        if parsed is None:
            return
        schema, kind, version = parsed
        if schema == self.schema and version > self.versions[kind]:
            self._wake[kind].set()

    def _check(self, versions: Mapping[str, tuple[int, int]]) -> None:
        for kind, (version, resets) in versions.items():
            if kind in self._wake and (
                version != self.versions[kind] or resets != self._resets.get(kind, resets)
            ):
                self._wake[kind].set()

    async def _worker(self, kind: str) -> None:
        wake = self._wake[kind]
        last_error = ""
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self.sync(kind)
                last_error = ""
            except asyncio.CancelledError:
                raise
            except _LINK_ERRORS as exc:
                # The database is away: the listener reconnects and then looks at every kind.
                logger.warning(
                    "shared state: sync waits for the database",
                    extra={"kind": kind, "error": str(exc) or type(exc).__name__},
                )
            except Exception as exc:
                # Bad data or our bug. The version poll wakes this again (every ``poll`` s);
                # the same failure again is one line, not another traceback.
                if str(exc) != last_error:
                    logger.exception("shared state: sync failed", extra={"kind": kind})
                else:
                    logger.warning(
                        "shared state: sync failed again", extra={"kind": kind, "error": str(exc)}
                    )
                last_error = str(exc)

    # -- one kind -------------------------------------------------------------------------------

    async def sync(self, kind: str) -> None:
        """Bring ``kind`` up to what the database holds now (one at a time per kind)."""
        async with self._locks[kind]:
            if kind == "exchange":
                await self._sync_exchange()
            elif kind == "consent":
                await self._sync_consent()
            elif kind == "erasure":
                await self._sync_erasure()
            else:
                await self._sync_dnc()

    async def reload_exchange(self) -> None:
        """The admin API changed exchange objects: apply them now (before it answers).

        Raises:
            ConfigInvalid: the stored configuration does not compile (the old one stays).
        """
        async with self._locks["exchange"]:
            await self._sync_exchange(strict=True)

    async def _sync_exchange(self, strict: bool = False) -> None:
        version, config = await self.store.exchange.read_config_versioned()
        if version <= self.versions["exchange"]:
            return
        try:
            # 25 ms per 1,000 bid profiles of pure Python: a worker thread keeps the event loop
            # answering SIP meanwhile (the GIL is handed over every 5 ms).
            index = await asyncio.to_thread(self._compile, config)
        except ConfigInvalid:  # keep the old config; a later change gets a new try
            self.versions["exchange"] = version
            if strict:
                raise
            logger.exception(
                "shared state: the stored exchange config does not compile; keeping the old",
                extra={"version": version},
            )
            return
        self._apply_exchange(config, index)
        self.versions["exchange"] = version
        logger.info("exchange config reloaded", extra={"version": version})

    async def _sync_consent(self) -> None:
        held = self.versions["consent"]
        since = held if held >= 0 else 0
        changes = await self.store.compliance.consents_since(since)
        if held < 0 or changes.resets != self._resets.get("consent", changes.resets):
            if since:  # deletions: read everything again
                changes = await self.store.compliance.consents_since(0)
            self.gate.consent = consent_store(changes.consents)
        else:
            consent = self.gate.consent
            for record in changes.consents:
                if record.caller.startswith("+"):
                    _add_consent(consent, record)
                    continue
                # Erased: the caller is now a hash. The erasure rewrote every record of that
                # caller in one transaction; move them all under the hash, as the API does.
                old = consent.get(record.id)
                if old is not None and old.caller != record.caller:
                    consent.replace_caller(old.caller, record.caller)
        self.versions["consent"] = changes.version
        self._resets["consent"] = changes.resets

    async def _sync_erasure(self) -> None:
        held = self.versions["erasure"]
        changes = await self.store.compliance.suppressions_since(max(held, 0))
        whole = held < 0 or changes.resets != self._resets.get("erasure", changes.resets)
        if whole and held > 0:
            changes = await self.store.compliance.suppressions_since(0)
        if whole or changes.suppressions:
            current = self.gate.suppression
            entries: dict[str, list[str]] = {}
            if not whole and current is not None:
                entries = current.entries()
            entries.update(changes.suppressions)  # a row's scope is its whole scope
            # A new set swapped in whole: the gate reads one or the other, never half of one.
            self.gate.suppression = Suppression(self._secret, entries)
        self.versions["erasure"] = changes.version
        self._resets["erasure"] = changes.resets

    async def _sync_dnc(self) -> None:
        # The counter first: a change after it has a higher version and wakes this again.
        counter = (await self.store.versions())["dnc"][0]
        catalog = await self.store.dnc.catalog()
        dnc = self.gate.dnc
        erasure_synced = False
        failed: list[str] = []
        for name, row in catalog.items():
            if self.dnc_versions.get(name) == row.version:
                continue
            try:
                found = await self.store.dnc.load_version(name)
            except StoreError as exc:  # this list's data is damaged: keep its old copy
                logger.error(
                    "DNC list not loaded; keeping the copy in use",
                    extra={"list": name, "error": str(exc)},
                )
                failed.append(name)
                continue
            if found is None:
                continue  # deleted meanwhile: the next sync drops it
            version, lst = found
            if not erasure_synced:
                # An erasure stores its suppression entry before it takes the number off the
                # lists: apply it first, so that here the number is never off both at once.
                await self.sync("erasure")
                erasure_synced = True
            if version <= self.dnc_versions.get(name, -1):
                continue  # the API stored this or a newer one meanwhile
            dnc.put(lst)  # an atomic swap: a lookup sees the old list or the new one
            self.dnc_versions[name] = version
            logger.info("DNC list loaded", extra={"list": name, "version": version})
        for name in [n for n in self.dnc_versions if n not in catalog]:
            dnc.remove(name)
            del self.dnc_versions[name]
            logger.warning("DNC list removed from the database: dropped", extra={"list": name})
        if failed:  # not caught up: the next version poll tries them again
            raise StoreError(f"DNC lists not loaded: {', '.join(failed)}")
        self.versions["dnc"] = max(self.versions["dnc"], counter)


async def _versions(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    rows = await conn.fetch("SELECT kind, version, resets FROM sync_versions")
    return {r["kind"]: (r["version"], r["resets"]) for r in rows}
