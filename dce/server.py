"""Wiring: the sans-IO core, its transports, the database, the exchange and the HTTP side.

``Switch.start()`` opens the database (embedded or DCE_DATABASE_URL), applies migrations, seeds
it with the config file's trunks/campaigns/buyers the first time only (later it loads what is
stored and says if the file differs: dce/configsync.py), builds the routing bridge (compliance
gate and exchange), loads the shared compliance data and follows every change other instances
on the same database make (dce/sync.py), then listens for SIP (UDP and TCP) and HTTP. The SIP
side is the sans-IO core fed by its pump (dce/pump.py). ``stop()`` drains: no new calls, BYE for
live ones, CDRs flushed, the embedded database stopped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import secrets
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from api.app import mount_api
from api.auth import Authenticator
from compliance.check import Gate
from compliance.erasure import Suppression
from compliance.fraud import FraudScorer
from compliance.stir import TrustStore
from config.settings import Settings
from dce import __version__, collector
from dce.addresses import advertised
from dce.admit import TrunkAdmitter, guard_config
from dce.aggregates import LiveStats
from dce.bridge import CallBridge
from dce.configsync import seed_or_compare
from dce.dashboard import Dashboard
from dce.endpoint_health import HealthTracker, ProbeConfig, Prober
from dce.health import DatabaseProbe, health
from dce.journal import Beat, Journal
from dce.livecalls import LiveCalls
from dce.load import TICK, LoadGate, RunClock, socket_rx_queue, udp_rx_queue
from dce.logs import CallLines
from dce.metrics import GcPauses
from dce.phone import add_phone_routes
from dce.pump import SipPump
from dce.shield import Shield
from dce.sync import SharedState, check_erasure_secret
from exchange.auction_index import AuctionIndex
from exchange.engine import Exchange
from exchange.models import ExchangeConfig
from media.anchor import MediaManager
from media.errors import MediaError
from store.database import Store
from store.writer import CdrWriter
from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.proxy import ProxyTrust
from switch.timers import TimerConfig
from switch.transport import TcpHub, UdpTransport
from switch.websocket import WsHub

logger = logging.getLogger(__name__)
CALM_TICKS = round(1.0 / TICK)  # shed 0 this long before "overload over" is logged


class Switch:
    """One switch process: the core and its pump, the database, the exchange and HTTP."""

    def __init__(
        self, settings: Settings, config: ExchangeConfig, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.config = config  # the config file's; replaced by what is stored at start
        self.config_path = config_path
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(secrets.randbits(128))
        self.started = False
        self.db_kind = "none"
        self.gc_pauses = GcPauses()
        self._background: list[asyncio.Task[Any]] = []  # runs until stop()
        self._servers: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.embedded: Any = None
        self.store: Any = None
        self.cdr_writer: Any = None
        self.db_probe: DatabaseProbe | None = None  # /healthz's cached database check
        self.router: Exchange | None = None
        self.sync: SharedState | None = None  # shared state (dce/sync.py), from start()
        self._exchange_version = -1
        self.bridge: CallBridge | None = None
        self.journal: Journal | None = None
        self.load = LoadGate(target_delay=settings.overload_delay,
                             max_lag=settings.overload_lag, max_cpu=settings.overload_cpu)
        self.admin_token = ""
        self.admitter = TrunkAdmitter(config, secrets.token_bytes(32), settings.digest_algorithms,
                                      guard=guard_config(settings),
                                      proxies=ProxyTrust(settings.trusted_proxies))
        # What peers are told (SIP Via/Contact, SDP): not a wildcard listen address.
        self.addresses = advertised(settings)
        self.media = MediaManager(
            mode=settings.media_mode,
            media_ip=self.addresses.media_ip,
            ports=settings.rtp_ports,
            rng=self.rng,
            workers=settings.media_workers,
        )
        self.core = SwitchCore(
            CoreConfig(
                host=self.addresses.sip_host,
                port=self.addresses.sip_port,
                ring_timeout=settings.ring_timeout,
                trying_timeout=settings.trying_timeout,
                max_calls=settings.max_calls,
                timers=TimerConfig(t1=settings.sip_t1),
                media_error=MediaError,
            ),
            self.admitter,
            rng=self.rng,
        )
        self.pump = SipPump(self.loop, self.core, self.media, self._submit_cleaned_cdr)
        self.pump.admitter = self.admitter
        self.pump.route_eagerly = settings.redis_url is None  # see SipPump.route_eagerly
        # The dashboard's last hour (dce/aggregates.py), fed by the pump from the first call.
        self.stats = LiveStats(time.time())
        self.pump.stats = self.stats
        self.pump.call_lines = CallLines(full_numbers=settings.log_numbers == "full")
        # Buyer endpoint health: OPTIONS probes; routing skips endpoints that are down.
        probes = ProbeConfig(interval=settings.probe_interval, timeout=settings.probe_timeout,
                             down_after=settings.probe_down_after,
                             up_after=settings.probe_up_after)
        self.prober = Prober(HealthTracker(probes), self.core, self.pump.transmit, self.loop.time)
        self.pump.prober = self.prober
        # Rate limits, bans and connection caps every transport consults (dce/shield.py).
        self.shield = Shield(self.loop, settings, self.admitter, self.core)
        self.ws = WsHub(
            self.pump.feed,
            self.pump.transmit,
            self.pump.connection_closed,
            token_check=self.admitter.ws_token,
            guard=self.shield.guard,
            limits=self.shield.ws_limits,
        )
        self.pump.ws = self.ws
        self.admitter.ws_trunk = self.ws.trunk_of

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self._open_database()
        self.router = self._build_router()
        self.bridge = CallBridge(self._build_gate(), self.router, self.config)
        self.prober.router = self.router
        self.prober.set_config(self.config)
        self.pump.bridge = self.bridge
        # Consent, erasure suppressions and DNC lists live in the database, shared with any
        # other instance on it; dce/sync.py loads them now and keeps them in step.
        await self._start_sync()
        await self.media.start()  # DCE_MEDIA_WORKERS worker processes, if any
        self.media.start_watchdog(s.media_timeout, self.pump.media_timeout)
        self.admin_token = self._admin_token()
        host, port = s.sip_listen
        pump = self.pump
        udp_transport, pump.udp = await self.loop.create_datagram_endpoint(
            lambda: UdpTransport(pump.feed, pump.transmit, self.shield.guard),
            local_addr=(host, port),
        )
        pump.tcp = TcpHub(self.loop, pump.feed, pump.transmit, guard=self.shield.guard,
                          limits=self.shield.tcp_limits)
        tcp_server = await self.loop.create_server(pump.tcp.factory, host, port, reuse_address=True)
        self._servers = [udp_transport, tcp_server]
        # The transports are up but nothing was read yet: end what an earlier process left.
        leftovers = self._recover()
        await self._start_http()
        collector.settle()  # freeze the start-up heap; thresholds (dce/collector.py)
        gc.callbacks.append(self.gc_pauses.callback)
        self._background.append(self.loop.create_task(collector.collect_young()))
        if leftovers:
            self._background.append(self.loop.create_task(self._forget_recovered(leftovers)))
        self._background.append(self.loop.create_task(self._heartbeat()))
        self._background.append(self.loop.create_task(self._watch_load()))
        if s.probe_interval > 0:
            self._background.append(self.loop.create_task(self.prober.run()))
        self.started = True
        print(f"SIP  udp {host}:{port}", flush=True)
        print(f"SIP  tcp {host}:{port}", flush=True)
        for note in self.addresses.notes:  # addresses picked for a wildcard listen
            print(note, flush=True)
            logger.info(note.replace("  ", " ", 1))
        scheme = "https" if s.tls_cert is not None else "http"
        print(f"HTTP {scheme}://{s.http_listen[0]}:{s.http_listen[1]} (/api/v1, /healthz, "
              "/metrics, /sip, /phone, /dashboard)", flush=True)
        print(
            f"RTP  {self.media.media_ip} ports {s.rtp_ports[0]}-{s.rtp_ports[1]} "
            f"({s.media_mode})",
            flush=True,
        )
        if s.media_workers and s.media_mode != "bypass":
            print(f"RTP  relayed by {s.media_workers} media worker processes", flush=True)
        print(f"DB   {self.db_kind}", flush=True)

    async def stop(self) -> None:
        """Drain: refuse new calls, BYE live ones, flush CDRs, close the database."""
        self.core.drain(self.loop.time())
        self.pump.transmit()
        deadline = self.loop.time() + 3.0
        while self.core.live_calls and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        self.media.close_all()
        await self.media.wait_closed()  # media workers: final counters back, then exit
        for server in self._servers:
            server.close()
        if self.pump.tcp is not None:
            self.pump.tcp.close()
        await self.ws.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
        self.pump.close()
        self.shield.close()
        for task in self._background:
            task.cancel()
        await self.pump.wait_tasks(timeout=2.0)
        if self.sync is not None:
            await self.sync.stop()
        if self.router is not None:
            # Flushes pending cap releases (Redis) and closes the RTB HTTP session.
            await self.router.aclose()
        if self.cdr_writer is not None:
            await self.cdr_writer.close()
        if self.journal is not None:
            self.journal.close()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()

    def _recover(self) -> list[Path]:
        """Crash recovery (dce/journal.py): BYE the legs of calls that were up when an earlier
        process died, and write every call's CDR; then journal this process's calls."""
        journal = self.journal = Journal(self.settings.data_dir / "journal")
        recovery, paths = journal.recover()
        journal.open()
        self.pump.journal = journal
        if self.cdr_writer is not None:
            self.cdr_writer.on_durable = journal.durable
        if not paths:
            return []
        self.core.hang_up_dialogs(
            [leg for leg in recovery.legs if leg.transport in ("udp", "tcp")], self.loop.time()
        )
        self.pump.transmit()
        for cdr in recovery.cdrs:
            self._submit_cdr(cdr)
        logger.warning(
            "recovered calls left by an earlier process",
            extra={
                "interrupted": recovery.interrupted,
                "unanswered": recovery.unanswered,
                "rewritten": recovery.rewritten,
                "bad_lines": recovery.bad_lines,
            },
        )
        return paths

    async def _forget_recovered(self, paths: list[Path]) -> None:
        """Delete the earlier process's journal once the CDRs it held are durable."""
        if self.cdr_writer is not None:
            await self.cdr_writer.flush()
        Journal.forget(paths)

    async def _watch_load(self) -> None:
        """Every TICK: the kernel queue's delay, loop lag and CPU share -> the share of new
        INVITEs to shed (dce/load.py)."""
        gate = self.load
        port = self.settings.sip_listen[1]
        udp = self.pump.udp
        sock = udp.transport.get_extra_info("socket") if udp and udp.transport else None
        run = RunClock()  # this coroutine runs on the loop's thread: it measures the loop
        try:
            shedding = False
            calm = 0  # ticks since the share was last above 0
            while True:
                due = self.loop.time() + TICK
                await asyncio.sleep(TICK)
                now = self.loop.time()
                # One getsockopt; /proc/net/udp lists every socket of the host (tens of ms with
                # thousands of RTP sockets open), so it is only the fallback.
                queue = socket_rx_queue(sock) if sock is not None else None
                share = gate.update(
                    now, time.process_time(), max(0.0, now - due),
                    udp_rx_queue(port) if queue is None else queue,
                    # Bytes read from the socket, a banned flood's included (switch/transport.py).
                    self.pump.udp.rx_bytes if self.pump.udp is not None else 0,
                    run.read(),
                )
                self.core.set_shedding(share)
                # One line when shedding starts and one when it has stayed off for a second: the
                # share touches 0 now and then while a load hovers at capacity.
                calm = 0 if share > 0.0 else calm + 1
                if (share > 0.0 and not shedding) or (shedding and calm >= CALM_TICKS):
                    shedding = share > 0.0
                    logger.warning(
                        "overload: shedding new calls" if shedding else "overload over",
                        extra={"shed": round(share, 3), "cpu": round(gate.cpu, 3),
                               "busy": round(gate.busy, 3),
                               "lag_ms": round(gate.lag * 1000), "queue": gate.queue,
                               "delay_ms": round(gate.delay * 1000)},
                    )
        finally:
            run.close()

    async def _heartbeat(self) -> None:
        """A Beat every second (how long an interrupted call lasted), fsync every
        DCE_JOURNAL_SYNC, off the loop."""
        journal = self.journal
        assert journal is not None
        interval = self.settings.journal_sync or 0.1
        next_beat = 0.0
        while True:
            now = self.loop.time()
            if now >= next_beat:
                next_beat = now + 1.0
                journal.append(Beat(at=datetime.now(UTC)))
                journal.flush()
            await asyncio.to_thread(journal.sync)
            await asyncio.sleep(interval)

    def _submit_cdr(self, cdr: Any) -> None:
        # Every CDR reaching here is cleaned already, read from the journal.
        if self.cdr_writer is not None:
            self.cdr_writer.submit(cdr, escaped=True)

    def _submit_cleaned_cdr(self, cdr: Any) -> None:
        # The pump's: the output of clean_cdr itself (dce/pump.py _ended).
        if self.cdr_writer is not None:
            self.cdr_writer.submit(cdr, cleaned=True)

    async def _open_database(self) -> None:
        dsn = self.settings.database_url
        if dsn is None:
            from store.embedded import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            dsn = await self.embedded.start()
            self.db_kind = f"embedded PostgreSQL in {self.settings.data_dir / 'pg'}"
        else:
            self.db_kind = "external PostgreSQL " + _redact(dsn)
        self.store = Store()
        await self.store.connect(dsn)
        await self.store.migrate()
        await self.store.ensure_partitions(datetime.now(UTC))
        # Read before the config: a change committed in between is simply loaded again.
        self._exchange_version = (await self.store.versions())["exchange"][0]
        # The file seeds the database once; after that the database wins (dce/configsync.py).
        self.config = await seed_or_compare(self.store, self.config, self.config_path)
        self.admitter.update(self.config)
        self.cdr_writer = CdrWriter(self.store, self.settings.data_dir / "spool")
        await self.cdr_writer.start()
        self.db_probe = DatabaseProbe(self._ping_database)
        # Monthly CDR partitions are created ahead of time, daily (storage.md §4).
        self._background.append(
            self.loop.create_task(self.store.maintain_partitions(lambda: datetime.now(UTC)))
        )

    def _build_gate(self) -> Gate:
        """The compliance gate: the STIR trust store (DCE_STIR_TRUST_DIR) and a fraud scorer;
        DNC lists, consent and suppressions come from the database (``_start_sync``)."""
        data = self.settings.data_dir
        trust_dir = self.settings.stir_trust_dir or data / "stir-trust"
        trust = TrustStore.from_directory(trust_dir) if trust_dir.is_dir() else TrustStore()
        suppression = Suppression(self._erasure_secret())
        return Gate(trust=trust, suppression=suppression, fraud=FraudScorer())

    def _erasure_secret(self) -> bytes:
        """DCE_ERASURE_SECRET, else the secret kept in DCE_DATA_DIR/erasure_secret."""
        if self.settings.erasure_secret:
            return bytes.fromhex(self.settings.erasure_secret)
        return self._secret("erasure_secret")

    async def _start_sync(self) -> None:
        """Load the shared compliance data and follow every change (dce/sync.py)."""
        assert self.bridge is not None and self.router is not None
        data = self.settings.data_dir
        secret = self._erasure_secret()
        where = "DCE_ERASURE_SECRET" if self.settings.erasure_secret else str(
            data / "erasure_secret"
        )
        await check_erasure_secret(self.store, secret, where)
        # Lists an earlier version kept as files move into the database, once.
        await self.store.dnc.adopt_files(data / "dnc")
        sync = self.sync = SharedState(
            self.store, self.bridge.gate, secret,
            compile=self.router.compile, apply_exchange=self._apply_exchange,
        )  # fmt: skip
        sync.versions["exchange"] = self._exchange_version  # what _open_database loaded
        await sync.load()
        sync.start()

    def _secret(self, name: str) -> bytes:
        """A random secret kept in DCE_DATA_DIR (0600), made on first use."""
        path = self.settings.data_dir / name
        if path.exists():
            return bytes.fromhex(path.read_text().strip())
        secret = secrets.token_bytes(32)
        path.write_text(secret.hex() + "\n")
        path.chmod(0o600)
        return secret

    def _build_router(self) -> Exchange:
        return Exchange.from_settings(
            self.config,
            redis_url=self.settings.redis_url,
            auction_timeout=self.settings.auction_timeout,
        )

    def _admin_token(self) -> str:
        if self.settings.admin_token:
            return self.settings.admin_token
        path = self.settings.data_dir / "admin_token"
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        path.write_text(token + "\n")
        path.chmod(0o600)
        print(f"Admin token (kept in {path}): {token}", flush=True)
        return token

    async def _reload_exchange(self) -> None:
        """The admin API changed exchange objects: they apply from the next call on."""
        assert self.sync is not None
        await self.sync.reload_exchange()  # raises ConfigInvalid and keeps the old one

    def _apply_exchange(self, config: ExchangeConfig, compiled: AuctionIndex) -> None:
        """Use a stored config (compiled off the loop by dce/sync.py) from the next call on."""
        assert self.bridge is not None
        self.bridge.update(config, compiled)
        self.admitter.update(config)
        self.prober.set_config(config)
        self.config = config

    # ------------------------------------------------------------------ HTTP

    async def _start_http(self) -> None:
        assert self.bridge is not None
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sip", self.ws.handle)  # SIP over WebSocket (RFC 7118)
        add_phone_routes(app, token_check=self.admitter.ws_token)
        Dashboard(self.stats, Authenticator(self.admin_token, self.store),
                  lambda: self.core.live_calls, store=self.store).add_routes(app)
        mount_api(
            app, self.store, admin_token=self.admin_token, on_change=self._reload_exchange,
            gate=self.bridge.gate, wall=lambda: datetime.now(UTC),
            dnc_versions=self.sync.dnc_versions if self.sync is not None else None,
            flush_cdrs=self.cdr_writer.flush,
            endpoint_health=lambda uri: self.prober.view(uri, self.pump.wall),
            live_calls=LiveCalls(self.core, self.media, lambda: self.bridge, self.loop.time,
                                 self.pump.wall, self.pump.transmit).source(),
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.http_listen
        site = web.TCPSite(self._runner, host, port, ssl_context=self._tls_context())
        await site.start()

    def _tls_context(self) -> ssl.SSLContext | None:
        """HTTPS and wss:// on DCE_HTTP_LISTEN when DCE_TLS_CERT and DCE_TLS_KEY are set
        (browsers off localhost need a secure origin for WebRTC)."""
        cert, key = self.settings.tls_cert, self.settings.tls_key
        if cert is None or key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    async def _healthz(self, request: web.Request) -> web.Response:
        """200 ok, or 503 naming what is wrong (dce/health.py); cheap enough to poll."""
        status, body = await health(
            started=self.started,
            probe=self.db_probe,
            writer=self.cdr_writer,
            extra={"live_calls": self.core.live_calls, "database": self.db_kind,
                   "version": __version__,
                   # Following other instances' changes? (dce/sync.py)
                   "shared_state": self.sync.state() if self.sync is not None else None},
        )
        return web.json_response(body, status=status)

    async def _ping_database(self) -> None:
        async with self.store.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def _metrics(self, request: web.Request) -> web.Response:
        from dce.metrics import render

        return web.Response(body=render(self), content_type="text/plain", charset="utf-8")


def _redact(dsn: str) -> str:
    """A DSN without its password, for the startup line."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
