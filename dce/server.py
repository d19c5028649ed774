"""Wiring: the sans-IO core, its transports, the database, the exchange and the HTTP side.

``Switch.start()`` opens the database (embedded or DCE_DATABASE_URL), applies migrations, loads
the config file's trunks/campaigns/buyers, then listens for SIP (UDP and TCP) and HTTP.
``transmit()`` is the one place that moves the core's output to sockets and effects to tasks,
and re-arms the single core timer (aioquic style). ``stop()`` drains: no new calls, BYE for
live ones, CDRs flushed, the embedded database stopped.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import math
import random
import secrets
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.app import load_compliance, mount_api
from compliance.check import Gate
from compliance.dnc import DncStore
from compliance.erasure import Suppression
from compliance.fraud import FraudScorer
from compliance.stir import TrustStore
from config.settings import Settings
from dce.bridge import CallDecider
from dce.eager import start_eager
from dce.phone import add_phone_routes
from exchange.engine import Exchange
from exchange.models import ExchangeConfig
from media.anchor import MediaManager
from media.errors import MediaError
from media.session import MediaSession
from store.cdr import Cdr, Disposition
from switch.admission import Admission, Admitted, Challenge
from switch.auth import DigestAuthenticator
from switch.core import AdmitResult, CoreConfig, SwitchCore
from switch.effects import CallAnswered, RouteCall, RouteOutcome, WriteCdr
from switch.message import SipRequest
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.transport import TcpHub, UdpTransport
from switch.websocket import WsHub

logger = logging.getLogger(__name__)

REALM = "dce"
TIMER_GRID = 100  # core timer resolution: 1/100 s


class TrunkAdmitter:
    """Adapts switch/admission.py to the core: source IP/CIDR first, then digest."""

    def __init__(self, config: ExchangeConfig, secret: bytes, algorithms: tuple[str, ...]) -> None:
        self.auth = DigestAuthenticator(REALM, secret, algorithms=algorithms)
        self.admission: Admission[Any] = Admission(())
        self.ws_trunk: Callable[[Peer], str | None] = lambda peer: None
        self._tokens: dict[str, str] = {}
        self.update(config)

    def update(self, config: ExchangeConfig) -> None:
        """Trunks changed (config file or admin API): rebuild the address and token indexes."""
        self.admission = Admission(config.trunks)
        self._tokens = {t.ws_token: t.id for t in config.trunks if t.ws_token and t.active}

    def ws_token(self, request: web.Request) -> str | None:
        """WebSocket upgrade check: no token -> "" (digest decides), known -> trunk, else None."""
        token = request.query.get("token")
        if token is None:
            return ""
        for known, trunk_id in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return trunk_id
        return None

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        if peer.transport in ("ws", "wss"):
            trunk_id = self.ws_trunk(peer)
            if trunk_id:
                return AdmitResult(trunk_id=trunk_id)
        result = self.admission.admit(
            # Browsers are never admitted by source address: only a token or digest.
            "" if peer.transport in ("ws", "wss") else peer.host,
            req.headers.get("authorization") or req.headers.get("proxy-authorization"),
            req.method,
            now,
            self.auth,
        )
        if isinstance(result, Admitted):
            return AdmitResult(trunk_id=result.trunk.id)
        if isinstance(result, Challenge):
            return AdmitResult(trunk_id=None, challenge=list(result.headers))
        return AdmitResult(trunk_id=None, reason=result.reason.replace(" ", "_"))


class Switch:
    def __init__(self, settings: Settings, config: ExchangeConfig) -> None:
        self.settings = settings
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(secrets.randbits(128))
        self.started = False
        self.db_kind = "none"
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.gc_pauses = GcPauses()
        self._tasks: set[asyncio.Task[Any]] = set()  # per-call work (routing)
        self._background: list[asyncio.Task[Any]] = []  # runs until stop()
        self.udp: UdpTransport | None = None
        self.tcp: TcpHub | None = None
        self._servers: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.embedded: Any = None
        self.store: Any = None
        self.cdr_writer: Any = None
        self.router: Exchange | None = None
        self.admin_token = ""
        self.admitter = TrunkAdmitter(config, secrets.token_bytes(32), settings.digest_algorithms)
        self.ws = WsHub(
            self._feed, self.transmit, self._ws_closed, token_check=self.admitter.ws_token
        )
        self.admitter.ws_trunk = self.ws.trunk_of
        self.media = MediaManager(
            mode=settings.media_mode,
            media_ip=settings.media_ip,
            ports=settings.rtp_ports,
            rng=self.rng,
        )
        host, port = settings.sip_listen
        self.core = SwitchCore(
            CoreConfig(
                host=host,
                port=port,
                ring_timeout=settings.ring_timeout,
                max_calls=settings.max_calls,
                timers=TimerConfig(t1=settings.sip_t1),
            ),
            self.admitter,
            wall=lambda: datetime.now(UTC),
            rng=self.rng,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self._open_database()
        self.router = self._build_router()
        self.decider = CallDecider(self._build_gate(), self.router, self.config)
        # Consent records and erasure suppressions live in the database (admin API).
        await load_compliance(self.store, self.decider.gate, self._secret("erasure_secret"))
        self.media.start_watchdog(s.media_timeout, self._media_timeout)
        self._background.append(self.loop.create_task(self._watch_dnc()))
        self.admin_token = self._admin_token()
        host, port = s.sip_listen
        udp_transport, self.udp = await self.loop.create_datagram_endpoint(
            lambda: UdpTransport(self._feed, self.transmit), local_addr=(host, port)
        )
        self.tcp = TcpHub(self.loop, self._feed, self.transmit)
        tcp_server = await self.loop.create_server(self.tcp.factory, host, port, reuse_address=True)
        self._servers = [udp_transport, tcp_server]
        await self._start_http()
        # Everything allocated so far lives as long as the process: keep the collector off it.
        # A young generation of 5,000 (CPython: 700) halves collection work per call; 20,000
        # made gen1 pauses of 0.8 s under load, and every pause stalls every call. Full
        # collections, which walk every live call, are ten times rarer than by default.
        gc.collect()
        gc.freeze()
        gc.set_threshold(5_000, 10, 100)
        gc.callbacks.append(self.gc_pauses.callback)
        self.started = True
        print(f"SIP  udp {host}:{port}", flush=True)
        print(f"SIP  tcp {host}:{port}", flush=True)
        scheme = "https" if s.tls_cert is not None else "http"
        print(f"HTTP {scheme}://{s.http_listen[0]}:{s.http_listen[1]} (/api/v1, /healthz, "
              "/metrics, /sip, /phone)", flush=True)
        print(
            f"RTP  {s.media_ip} ports {s.rtp_ports[0]}-{s.rtp_ports[1]} ({s.media_mode})",
            flush=True,
        )
        print(f"DB   {self.db_kind}", flush=True)

    async def stop(self) -> None:
        """Drain: refuse new calls, BYE live ones, flush CDRs, close the database."""
        self.core.drain(self.loop.time())
        self.transmit()
        deadline = self.loop.time() + 3.0
        while self.core.live_calls and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        self.media.close_all()
        for server in self._servers:
            server.close()
        if self.tcp is not None:
            self.tcp.close()
        await self.ws.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._timer is not None:
            self._timer.cancel()
        for task in self._background:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self.router is not None:
            # Flushes pending cap releases (Redis) and closes the RTB HTTP session.
            await self.router.aclose()
        if self.cdr_writer is not None:
            await self.cdr_writer.close()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()

    async def _open_database(self) -> None:
        from store.database import Store
        from store.writer import CdrWriter

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
        await self.store.load_config(self.config)
        self.config = await self.store.load_exchange()
        self.admitter.update(self.config)
        self.cdr_writer = CdrWriter(self.store, self.settings.data_dir / "spool")
        await self.cdr_writer.start()
        # Monthly CDR partitions are created ahead of time, daily (storage.md §4).
        self._background.append(
            self.loop.create_task(self.store.maintain_partitions(lambda: datetime.now(UTC)))
        )

    def _build_gate(self) -> Gate:
        """The compliance gate with its data: DNC lists saved under DCE_DATA_DIR/dnc, the STIR
        trust store (DCE_STIR_TRUST_DIR), the erasure suppression list."""
        data = self.settings.data_dir
        dnc_dir = data / "dnc"
        dnc = DncStore.load(dnc_dir) if dnc_dir.is_dir() else DncStore()
        trust_dir = self.settings.stir_trust_dir or data / "stir-trust"
        trust = TrustStore.from_directory(trust_dir) if trust_dir.is_dir() else TrustStore()
        suppression = Suppression(self._secret("erasure_secret"))
        return Gate(dnc=dnc, trust=trust, suppression=suppression, fraud=FraudScorer())

    async def _watch_dnc(self, interval: float = 5.0) -> None:
        """Reload DNC lists that `dce dnc import` (another process) saved or changed."""
        directory = self.settings.data_dir / "dnc"

        def stamp() -> dict[str, float]:
            if not directory.is_dir():
                return {}
            return {p.name: p.stat().st_mtime for p in directory.glob("*.json")}

        seen = stamp()
        while True:
            await asyncio.sleep(interval)
            now = stamp()
            if now == seen:
                continue
            seen = now
            try:
                # Reading tens of MB of list files is slow work: keep it off the loop.
                store = await self.loop.run_in_executor(None, DncStore.load, directory)
            except Exception:
                logger.exception("reloading DNC lists failed; keeping the lists in use")
                continue
            self.decider.gate.dnc = store
            logger.info("DNC lists reloaded", extra={"lists": len(now)})

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

    # ------------------------------------------------------------------ SIP pump

    def _feed(self, data: bytes, peer: Peer) -> None:
        self.core.receive_datagram(data, peer, self.loop.time())

    def transmit(self) -> None:
        """Send what the core produced, start its effects, re-arm its one timer."""
        core = self.core
        for data, peer in core.datagrams_to_send():
            if peer.transport == "udp":
                assert self.udp is not None
                self.udp.send(data, peer.host, peer.port)
            elif peer.transport == "tcp" and self.tcp is not None:
                self.tcp.send(data, peer)
            elif peer.transport in ("ws", "wss"):
                self.ws.send(data, peer)
            else:
                logger.warning("no transport for peer", extra={"peer": str(peer)})
        while (effect := core.next_effect()) is not None:
            if isinstance(effect, RouteCall):
                # Most decisions never wait (no RTB, in-process caps): no Task for those.
                task = start_eager(self.loop, self._route(effect))
                if task is not None:
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif isinstance(effect, WriteCdr):
                self._write_cdr(effect)
            elif isinstance(effect, CallAnswered) and self.router is not None:
                self.router.answered(effect.facts, effect.target)
        when = core.get_timer()
        if when is None:
            return
        # SIP timers need no sub-10 ms precision: rounding deadlines up to a 10 ms grid lets
        # the many transactions of a busy switch share one wake-up. An armed timer that is
        # due no later than needed is kept (an early wake-up is cheaper than cancelling and
        # re-creating a handle on every message); only an earlier deadline re-arms it.
        when = math.ceil(when * TIMER_GRID) / TIMER_GRID
        if self._timer_at is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self.loop.time())
        self.transmit()

    async def _route(self, effect: RouteCall) -> None:
        try:
            outcome = await self.decider.decide(effect, datetime.now(UTC))
        except Exception:
            logger.exception("routing failed", extra={"call_id": effect.call_id})
            outcome = RouteOutcome(
                reject_status=500,
                reject_reason="Server Internal Error",
                rule="routing_error",
                disposition="failed",
            )
        media: MediaSession | None = None
        if outcome.targets:
            try:
                media = await self.media.open(
                    effect.call_id,
                    effect.offer,
                    effect.source_ip,
                    webrtc=effect.facts.source == "webrtc",
                )
            except MediaError as exc:
                # 488 for an offer we cannot anchor, 503 when no RTP ports are free.
                outcome = RouteOutcome(
                    reject_status=exc.status,
                    reject_reason="Not Acceptable Here"
                    if exc.status == 488
                    else "Service Unavailable",
                    rule="sdp" if exc.status == 488 else "no_media_ports",
                    disposition="failed",
                    cdr=outcome.cdr,
                )
        if not self.core.route_done(effect.call_id, outcome, self.loop.time(), media):
            self.media.close(effect.call_id)  # the caller gave up while we were routing
        self.transmit()

    async def _reload_exchange(self) -> None:
        """The admin API changed exchange objects: they apply from the next call on."""
        config = await self.store.load_exchange()
        self.decider.update(config)  # compiles first; raises and keeps the old one if invalid
        self.admitter.update(config)
        self.config = config

    def _ws_closed(self, peer: Peer) -> None:
        """A browser's socket closed (or it vanished): end its calls."""
        self.core.connection_closed(peer, self.loop.time())

    def _media_timeout(self, call_id: str) -> None:
        self.core.end_call(call_id, Disposition.MEDIA_TIMEOUT, self.loop.time())
        self.transmit()

    def _write_cdr(self, effect: WriteCdr) -> None:
        cdr: Cdr = effect.cdr
        for name, value in self.media.close(cdr.call_id).items():
            setattr(cdr, name, value)
        if effect.answered and effect.target is not None and cdr.trunk_id:
            # Feeds the fraud score's "short calls just under the buyers' minimum" signal.
            self.decider.gate.record_call_end(
                cdr.trunk_id, cdr.duration_ms, effect.target.min_duration_s, cdr.ended_at
            )
        try:
            if self.router is not None:
                s = self.router.settle(
                    effect.facts, effect.target, effect.answered, cdr.duration_ms
                )
                cdr.bid, cdr.price, cdr.payout, cdr.billable = s.bid, s.price, s.payout, s.billable
        except Exception:
            logger.exception("settlement failed", extra={"call_id": cdr.call_id})
        if self.cdr_writer is not None:
            self.cdr_writer.submit(cdr)

    # ------------------------------------------------------------------ HTTP

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sip", self.ws.handle)  # SIP over WebSocket (RFC 7118)
        add_phone_routes(app)
        mount_api(
            app, self.store, admin_token=self.admin_token, on_change=self._reload_exchange,
            gate=self.decider.gate, wall=lambda: datetime.now(UTC),
            dnc_dir=self.settings.data_dir / "dnc", flush_cdrs=self.cdr_writer.flush,
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
        body = {
            "status": "ok" if self.started else "starting",
            "live_calls": self.core.live_calls,
            "database": self.db_kind,
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        from dce.metrics import render

        return web.Response(body=render(self), content_type="text/plain", charset="utf-8")


class GcPauses:
    """Garbage-collector pauses per generation, for /metrics (a pause stalls every call)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        pause = time.perf_counter() - self._started
        self.count[gen] += 1
        self.total[gen] += pause
        self.longest[gen] = max(self.longest[gen], pause)


def _redact(dsn: str) -> str:
    """A DSN without its password, for the startup line."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
