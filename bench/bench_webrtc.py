"""WebRTC calls terminated on one core, and the memory of idle SIP WebSockets (issue 7).

Not a test. Run from the project root:

    .venv/bin/python bench/bench_webrtc.py calls                    # 10, 20, 30 ... calls
    .venv/bin/python bench/bench_webrtc.py calls --steps 20,30,40 --hold 10
    .venv/bin/python bench/bench_webrtc.py ws-idle --n 1000

``calls``
---------
* The switch side runs in a child process pinned to ``--server-core`` (default 1), on uvloop:
  ``media.webrtc.open_webrtc`` for every call, exactly as the switch opens them (ICE + DTLS-SRTP
  terminated, audio bridged to a plain RTP leg), behind a tiny HTTP control API instead of SIP
  (SIP is not what is measured here).
* This process, pinned to ``--client-core`` (default 0), plays the browsers and the buyers.
  Browsers are aiortc peer connections offering PCMU that send pre-encoded 20 ms PCMU packets
  (aiortc packs ``av.Packet`` without an encoder) and count what comes back with a stub in
  aiortc's RTP router (no decoder), so the client stays cheaper than the switch. Each buyer is
  a UDP socket that counts the RTP it gets, checks sequence gaps, and echoes every packet
  back, so the switch carries 50 packets/s each way per call.
* A step holds N calls for ``--hold`` seconds. It is clean when every buyer received at least
  98 % of the 50 packets/s it should have, with no sequence gap, and every browser got back at
  least 98 % of that. CPU is the switch process's own (user + system) time over the hold;
  memory is its RSS with N calls minus its RSS before them.
* The printout ends with the highest clean N, and CPU and memory per call there.

``ws-idle``
-----------
A child process serves ``switch.websocket.WsHub`` on ``/sip``; this process opens ``--n``
WebSocket connections with the ``sip`` subprotocol and leaves them idle. The child's RSS before
and after gives KB per idle connection.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PTIME = 0.020
PPS = 50


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ============================================================================ switch side


async def serve_calls(port: int, rtp_low: int) -> None:
    from aiohttp import web

    from media.ports import PortAllocator
    from media.webrtc import WebRtcConfig, WebRtcSession, open_webrtc

    ports = PortAllocator(rtp_low, rtp_low + 3999)
    sessions: dict[str, WebRtcSession] = {}
    dead: list[str] = []
    # One certificate for the process (RFC 8827 allows reuse), as the switch would configure.
    from aiortc import RTCCertificate

    config = WebRtcConfig(certificate=RTCCertificate.generateCertificate(), dead_after=5.0)

    async def open_call(request: web.Request) -> web.Response:
        body = await request.json()
        session = await open_webrtc(
            body["call_id"],
            body["offer"].encode(),
            media_ip="127.0.0.1",
            ports=ports,
            on_dead=dead.append,
            config=config,
        )
        sessions[body["call_id"]] = session
        buyer = (
            "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {body['buyer_port']} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        ).encode()
        answer = session.b_answered(buyer)
        session.answered()
        return web.json_response({"answer": answer.decode()})

    async def close_all(request: web.Request) -> web.Response:
        for s in sessions.values():
            s.close()
        for s in sessions.values():
            await s.wait_closed()
        sessions.clear()
        return web.json_response({"ports_free": ports.free, "capacity": ports.capacity})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "cpu": cpu_seconds(),
                "rss_kb": rss_kb(),
                "sessions": len(sessions),
                "connected": sum(s.connected for s in sessions.values()),
                "dead": len(dead),
            }
        )

    app = web.Application()
    app.router.add_post("/open", open_call)
    app.router.add_post("/close_all", close_all)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_ws(port: int) -> None:
    from aiohttp import web

    from switch.transport import ConnLimits
    from switch.websocket import WsHub

    # Every simulated browser comes from 127.0.0.1: no per-address cap, no idle timeout.
    hub = WsHub(lambda data, peer: None, lambda: None, lambda peer: None,
                limits=ConnLimits(max_connections=0, max_per_source=0, idle_timeout=0))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"rss_kb": rss_kb(), "open": hub.stats.open})

    app = web.Application()
    app.router.add_get("/sip", hub.handle)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def start_child(mode: str, core: int, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, *args]
    if os.path.exists("/usr/bin/taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"{mode} child did not start: {line!r}")
    return proc


# ============================================================================ client side


class BuyerSink(asyncio.DatagramProtocol):
    """The buyer: counts RTP and sequence gaps, echoes every packet to where it came from."""

    def __init__(self) -> None:
        self.count = 0
        self.gaps = 0
        self.last_seq: int | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count += 1
        seq = struct.unpack_from("!H", data, 2)[0]
        if self.last_seq is not None and seq != (self.last_seq + 1) & 0xFFFF:
            self.gaps += 1
        self.last_seq = seq
        assert self.transport is not None
        self.transport.sendto(data, addr)


class CountingReceiver:
    """Stands in for aiortc's RTCRtpReceiver in the client's RTP router: no decode."""

    def __init__(self) -> None:
        self.count = 0

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        self.count += 1

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        return None

    def _handle_disconnect(self) -> None:
        return None


def packet_track() -> Any:
    import av
    from aiortc.mediastreams import MediaStreamTrack

    payload = bytes([0xFF]) * 160  # PCMU silence; the switch does not look at it

    class PcmuTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._n = 0
            self._start: float | None = None

        async def recv(self) -> Any:
            loop = asyncio.get_running_loop()
            if self._start is None:
                self._start = loop.time()
            due = self._start + self._n * PTIME
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(payload)
            packet.pts = self._n * 160
            packet.time_base = fractions.Fraction(1, 8000)
            self._n += 1
            return packet

    return PcmuTrack()


class Browser:
    def __init__(self, call_id: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

        self.call_id = call_id
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tr = self.pc.addTransceiver(packet_track(), direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("audio").codecs
        tr.setCodecPreferences([c for c in caps if c.mimeType == "audio/PCMU"])
        self.counter = CountingReceiver()
        self.sink = BuyerSink()
        self.sink_port = 0

    async def start(self, http: Any, base: str) -> None:
        from aiortc import RTCSessionDescription

        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(lambda: self.sink, local_addr=("127.0.0.1", 0))
        self.sink_port = t.get_extra_info("sockname")[1]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with http.post(
            f"{base}/open",
            json={
                "call_id": self.call_id,
                "offer": self.pc.localDescription.sdp,
                "buyer_port": self.sink_port,
            },
        ) as resp:
            answer = (await resp.json())["answer"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    def swap_receiver(self) -> bool:
        """Once connected, count incoming RTP in place of aiortc's decoding receiver."""
        if self.pc.connectionState != "connected":
            return False
        receiver = self.pc.getTransceivers()[0].receiver
        router = receiver.transport._rtp_router
        router.unregister_receiver(receiver)
        router.register_receiver(self.counter, ssrcs=[], payload_types=[0], mid=None)
        return True

    async def close(self) -> None:
        await self.pc.close()
        if self.sink.transport is not None:
            self.sink.transport.close()


async def get_json(http: Any, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def run_step(http: Any, base: str, n: int, hold: float) -> dict[str, Any]:
    before = await get_json(http, f"{base}/stats")
    browsers = [Browser(f"c{n}-{i}") for i in range(n)]
    for b in browsers:  # staggered, as real calls arrive
        await b.start(http, base)
        await asyncio.sleep(0.01)
    deadline = time.monotonic() + 20
    pending = list(browsers)
    while pending and time.monotonic() < deadline:
        pending = [b for b in pending if not b.swap_receiver()]
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # settle: DTLS done everywhere, queues drained
    s0 = await get_json(http, f"{base}/stats")
    sink0 = [(b.sink.count, b.sink.gaps, b.counter.count) for b in browsers]
    t0 = time.monotonic()
    await asyncio.sleep(hold)
    s1 = await get_json(http, f"{base}/stats")
    elapsed = time.monotonic() - t0
    sink1 = [(b.sink.count, b.sink.gaps, b.counter.count) for b in browsers]
    expected = PPS * elapsed
    to_buyer = [a[0] - b[0] for a, b in zip(sink1, sink0, strict=True)]
    gaps = [a[1] - b[1] for a, b in zip(sink1, sink0, strict=True)]
    to_browser = [a[2] - b[2] for a, b in zip(sink1, sink0, strict=True)]
    clean = (
        not pending
        and min(to_buyer) >= 0.98 * expected
        and min(to_browser) >= 0.98 * expected
        and max(gaps) == 0
        and s1["dead"] == before["dead"]
    )
    cpu = (s1["cpu"] - s0["cpu"]) / elapsed * 100
    result = {
        "n": n,
        "clean": clean,
        "connected": n - len(pending),
        "cpu_pct": cpu,
        "cpu_per_call_pct": cpu / n,
        "rss_per_call_kb": (s1["rss_kb"] - before["rss_kb"]) / n,
        "min_to_buyer_pct": 100 * min(to_buyer) / expected,
        "min_to_browser_pct": 100 * min(to_browser) / expected,
        "gaps": sum(gaps),
    }
    for b in browsers:
        await b.close()
    async with http.post(f"{base}/close_all") as resp:
        closed = await resp.json()
    result["ports_back"] = closed["ports_free"] == closed["capacity"]
    return result


async def bench_calls(args: argparse.Namespace) -> None:
    import aiohttp
    import aioice.ice

    # The client's "browsers" gather on loopback (aioice skips it, libs.md §2).
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.client_core})
    port = free_port()
    proc = start_child("_calls", args.server_core, str(port), str(args.rtp_low))
    base = f"http://127.0.0.1:{port}"
    best: dict[str, Any] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            print(
                f"switch side on core {args.server_core}, client on core {args.client_core}; "
                f"hold {args.hold:g}s per step"
            )
            print(
                f"{'calls':>5} {'up':>4} {'clean':>5} {'cpu%':>6} {'cpu%/call':>9} {'KB/call':>8} "
                f"{'->buyer%':>8} {'->browser%':>10} {'gaps':>4}"
            )
            for n in args.steps:
                r = await run_step(http, base, n, args.hold)
                print(
                    f"{r['n']:>5} {r['connected']:>4} {('yes' if r['clean'] else 'NO'):>5} {r['cpu_pct']:>6.1f} "
                    f"{r['cpu_per_call_pct']:>9.2f} {r['rss_per_call_kb']:>8.0f} "
                    f"{r['min_to_buyer_pct']:>8.1f} {r['min_to_browser_pct']:>10.1f} "
                    f"{r['gaps']:>4}",
                    flush=True,
                )
                if not r["ports_back"]:
                    print("  (ports not all returned after close)")
                if r["clean"]:
                    best = r
                elif r["cpu_pct"] > 95 or not r["clean"]:
                    break
                await asyncio.sleep(1.0)
    finally:
        proc.kill()
        proc.wait()
    if best is None:
        print("no clean step")
        return
    print(
        f"\nhighest clean: {best['n']} WebRTC calls on one core; "
        f"{best['cpu_per_call_pct']:.2f} % of a core and {best['rss_per_call_kb']:.0f} KB per call "
        f"(so about {100 / best['cpu_per_call_pct']:.0f} calls per core at 100 %)"
    )
    print(json.dumps({"best": best}))


async def bench_ws_idle(args: argparse.Namespace) -> None:
    import aiohttp

    port = free_port()
    proc = start_child("_ws", args.server_core, str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            before = await get_json(http, f"{base}/stats")
            sockets = []
            for i in range(args.n):
                sockets.append(await http.ws_connect(f"{base}/sip", protocols=("sip",)))
                if i % 200 == 199:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)
            after = await get_json(http, f"{base}/stats")
            for ws in sockets:
                await ws.close()
    finally:
        proc.kill()
        proc.wait()
    per = (after["rss_kb"] - before["rss_kb"]) / args.n
    print(
        f"{after['open']} idle SIP WebSockets: RSS {before['rss_kb']} KB -> {after['rss_kb']} KB, "
        f"{per:.1f} KB per connection"
    )
    print(json.dumps({"n": args.n, "open": after["open"], "kb_per_conn": per}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_calls", "_ws"):
        import uvloop

        if sys.argv[1] == "_calls":
            uvloop.run(serve_calls(int(sys.argv[2]), int(sys.argv[3])))
        else:
            uvloop.run(serve_ws(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    calls = sub.add_parser("calls", help="concurrent WebRTC calls on one core")
    calls.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 30, 40, 50, 60]
    )
    calls.add_argument("--hold", type=float, default=10.0)
    calls.add_argument("--server-core", type=int, default=1)
    calls.add_argument("--client-core", type=int, default=0)
    calls.add_argument("--rtp-low", type=int, default=44000)
    idle = sub.add_parser("ws-idle", help="memory of idle SIP WebSocket connections")
    idle.add_argument("--n", type=int, default=1000)
    idle.add_argument("--server-core", type=int, default=1)
    args = parser.parse_args()
    random.seed(1)
    if args.cmd == "calls":
        asyncio.run(bench_calls(args))
    else:
        asyncio.run(bench_ws_idle(args))


if __name__ == "__main__":
    main()
