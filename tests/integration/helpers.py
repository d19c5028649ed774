"""Real peers for the integration tests: `dce run` as a subprocess, SIPp, raw SIP sockets.

Everything here drives real processes and real sockets on the loopback interface; nothing is
mocked. Each helper is bounded in time: subprocesses get timeouts, sockets get deadlines.

* :class:`Switch` starts ``dce run`` with a generated TOML config, free ports, a temporary
  DCE_DATA_DIR, and waits for ``/healthz``. ``stop()`` sends SIGTERM and returns the exit code.
* :func:`run_uac` / :func:`start_uas` run SIPp scenarios from ``sipp_scenarios/`` (one call,
  ``-m 1``, unique ``-cid_str``, ``-timeout``), judged by exit code.
* :class:`SipSocket` sends hand-written SIP over UDP or TCP and reads the responses;
  :class:`DigestUac` is a small Python caller that answers digest challenges (SIPp 3.6 can only
  compute MD5).
* :class:`PgProxy` is a TCP proxy in front of PostgreSQL that a test can cut and restore.
* CDR reads go through asyncpg (:func:`fetch`, :func:`wait_cdr`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
SCENARIOS = ROOT / "sipp_scenarios"
CALLED = "18005550100"  # campaign number of the default test config, without the plus
CALLER = "+13122600123"  # From user in every sipp_scenarios/uac*.xml (a valid, assignable number)
SIPP = shutil.which("sipp")


def dce_command() -> list[str]:
    """The ``dce`` console script next to this interpreter, else ``python -m dce.cli``."""
    script = Path(sys.executable).with_name("dce")
    if script.exists():
        return [str(script)]
    found = shutil.which("dce")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from dce.cli import main; sys.exit(main())"]


# ---------------------------------------------------------------------------------------------
# ports


def _udp_and_tcp_free(host: str, port: int) -> bool:
    with contextlib.ExitStack() as stack:
        try:
            u = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            u.bind((host, port))
            t = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            t.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (SIP listens on both), not handed out yet.

    Ports come from below the kernel's ephemeral range: polling a not-yet-listening port in
    that range can make the client connect to itself (TCP simultaneous open) and then hold
    the very port the server wants.
    """
    eph_lo, _ = _ephemeral_range()
    lo, hi = 10000, min(eph_lo, 32768) - 1
    for _ in range(500):
        port = lo + secrets.randbelow(hi - lo)
        if port in _handed_out:
            continue
        if _udp_and_tcp_free(host, port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free UDP+TCP port found")


def free_port_range(size: int = 200) -> tuple[int, int]:
    """An even-aligned range of ``size`` ports above the ephemeral range for DCE_RTP_PORTS."""
    _, eph_hi = _ephemeral_range()
    lo = max(eph_hi + 1, 61000)
    base = lo + 2 * secrets.randbelow((65000 - lo - size) // 2)
    return base, base + size - 1


def port_bound(port: int, host: str = "127.0.0.1", transport: str = "udp") -> bool:
    """True when something listens on ``host:port`` (we cannot bind it ourselves)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def rtp_socket_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """Two bound UDP sockets on ``host``: RTP on an even port, RTCP on the next (RFC 3550 §11).

    Ports come from below the kernel's ephemeral range, like :func:`free_port`.
    """
    eph_lo, _ = _ephemeral_range()
    lo, hi = 10000, min(eph_lo, 32768) - 2
    for _ in range(500):
        port = (lo + secrets.randbelow(hi - lo)) & ~1
        if port in _handed_out or port + 1 in _handed_out:
            continue
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        _handed_out.update((port, port + 1))
        for s in (rtp, rtcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        return rtp, rtcp
    raise RuntimeError(f"no free even/odd UDP port pair on {host}")


def unbindable_udp_ports(host: str, low: int, high: int) -> list[int]:
    """The ports of ``low..high`` (inclusive) that cannot be bound for UDP on ``host`` now."""
    taken = []
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                taken.append(port)
    return taken


def wait_bound(port: int, host: str = "127.0.0.1", transport: str = "udp",
               timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_bound(port, host, transport):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing bound {transport} {host}:{port} within {timeout}s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# config


def toml_value(value: Any) -> str:
    """One TOML value; dicts become inline tables, so a whole config fits in key = value lines."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: Mapping[str, Any]) -> str:
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in config.items())


def ip_trunk(trunk_id: str = "it-ip",
             sources: Sequence[str] = ("127.0.0.1/32",)) -> dict[str, Any]:
    return {"id": trunk_id, "name": f"trunk {trunk_id}", "source_ips": list(sources)}


def digest_trunk(username: str, password: str, trunk_id: str = "it-digest") -> dict[str, Any]:
    return {"id": trunk_id, "name": f"trunk {trunk_id}", "username": username,
            "password": password}


def campaign(campaign_id: str, numbers: Sequence[str], **extra: Any) -> dict[str, Any]:
    """A campaign whose compliance gate lets test traffic through: no calling-hours window (tests
    run at any hour) and a fraud threshold of 100 (one caller placing many calls in a few
    seconds is what a test does, and what the fraud score's velocity signals catch)."""
    doc: dict[str, Any] = {"id": campaign_id, "name": f"campaign {campaign_id}",
                           "numbers": list(numbers),
                           "compliance": {"calling_hours": False, "fraud_threshold": 100}}
    doc.update(extra)
    return doc


def buyer(buyer_id: str, endpoint_uris: Sequence[str], **extra: Any) -> dict[str, Any]:
    """A buyer whose endpoints are tried in the given order (ids ``<buyer_id>-e1`` ...)."""
    doc: dict[str, Any] = {
        "id": buyer_id, "name": f"buyer {buyer_id}",
        "endpoints": [{"id": f"{buyer_id}-e{i + 1}", "uri": uri}
                      for i, uri in enumerate(endpoint_uris)],
    }
    doc.update(extra)
    return doc


# ---------------------------------------------------------------------------------------------
# databases


def _with_database(url: str, name: str) -> str:
    """``url`` with its database (path) replaced by ``name``; query string kept."""
    m = re.match(r"^(postgres(?:ql)?://[^/?]*)(/[^?]*)?(\?.*)?$", url)
    if m is None:
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"{m.group(1)}/{name}{m.group(3) or ''}"


async def _admin_connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        # DCE_TEST_DATABASE_URL may name a database that does not exist yet: use the
        # maintenance database of the same server to create ours.
        return await asyncpg.connect(_with_database(url, "postgres"), timeout=10)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running loop
    (an async test): then it runs on a loop of its own in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database(server_url: str, prefix: str = "dce_it") -> str:
    """CREATE DATABASE ``<prefix>_<random>`` on the server of ``server_url``; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(5)}"

    async def go() -> None:
        conn = await _admin_connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_sync(go())
    return _with_database(server_url, name)


def drop_database(server_url: str, db_url: str) -> None:
    name = db_url.split("?")[0].rsplit("/", 1)[1]

    async def go() -> None:
        conn = await _admin_connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(go())


def embedded_dsn(data_dir: Path) -> str:
    """The DSN of the switch's embedded PostgreSQL under ``data_dir`` (Unix socket, no TCP)."""
    from store.embedded import dsn_for, socket_dir_for

    return dsn_for(socket_dir_for(data_dir.resolve()))


def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query on a fresh connection; rows as dicts."""

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return run_sync(go())


def wait_cdr(dsn: str, a_call_id: str, timeout: float = 8.0) -> dict[str, Any]:
    """The one ``cdrs`` row of the call whose caller leg had ``a_call_id``, once written."""
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch(dsn, "SELECT * FROM cdrs WHERE a_call_id = $1", a_call_id)
        if rows:
            assert len(rows) == 1, f"{len(rows)} CDRs for {a_call_id}: {rows}"
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no CDR with a_call_id={a_call_id!r} after {timeout}s")
        time.sleep(0.1)


def count_cdrs(dsn: str, like: str | None = None) -> int:
    if like is None:
        rows = fetch(dsn, "SELECT count(*) AS n FROM cdrs")
    else:
        rows = fetch(dsn, "SELECT count(*) AS n FROM cdrs WHERE a_call_id LIKE $1", like)
    return int(rows[0]["n"])


# ---------------------------------------------------------------------------------------------
# the switch


def _http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Switch:
    """One ``dce run`` subprocess with its own ports, data dir and config file.

    ``database_url`` None means the embedded PostgreSQL under ``data_dir``.
    """

    workdir: Path
    config: dict[str, Any]
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    sip_port: int = 0
    http_port: int = 0
    data_dir: Path | None = None
    name: str = "dce"
    proc: subprocess.Popen[bytes] | None = None
    stdout_path: Path | None = None
    stderr_path: Path | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port = self.sip_port or free_port(self.host)
        self.http_port = self.http_port or free_port(self.host)
        self.data_dir = self.data_dir or (self.workdir / "var")
        self.config_path = self.workdir / f"{self.name}.toml"
        self.config_path.write_text(to_toml(self.config))

    @property
    def sip_addr(self) -> str:
        return f"{self.host}:{self.sip_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dsn(self) -> str:
        """Where the tests read CDRs: the external database, or the embedded one's socket."""
        if self.database_url is not None:
            return self.database_url
        assert self.data_dir is not None
        return embedded_dsn(self.data_dir)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCE_")}
        lo, hi = free_port_range()
        env.update({
            "DCE_SIP_LISTEN": self.sip_addr,
            "DCE_HTTP_LISTEN": f"{self.host}:{self.http_port}",
            "DCE_DATA_DIR": str(self.data_dir),
            "DCE_RTP_PORTS": f"{lo}-{hi}",
            "DCE_ADMIN_TOKEN": "it-admin-token",
            "DCE_LOG_LEVEL": "info",
            "DCE_RING_TIMEOUT": "2s",
            "PYTHONUNBUFFERED": "1",
        })
        if self.database_url is not None:
            env["DCE_DATABASE_URL"] = self.database_url
        env.update(self.env)
        return env

    def start(self, timeout: float = 60.0, taskset: str | None = None) -> Switch:
        """Start ``dce run`` and wait until ``/healthz`` says ok (or the process dies)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        tag = f"{self.name}.{self.starts}"
        self.stdout_path = self.workdir / f"{tag}.stdout"
        self.stderr_path = self.workdir / f"{tag}.stderr.jsonl"
        cmd = [*dce_command(), "run", "--config", str(self.config_path)]
        if taskset:
            cmd = ["taskset", "-c", taskset, *cmd]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.environment(),
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"dce run exited with {self.proc.returncode} during startup\n{self.tail()}")
            try:
                status, body = _http_get(self.url + "/healthz", timeout=0.5)
                if status == 200 and json.loads(body).get("status") == "ok":
                    return self
            except (OSError, ValueError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"dce run not healthy after {timeout}s\n{self.tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthz(self) -> dict[str, Any]:
        status, body = _http_get(self.url + "/healthz", timeout=2.0)
        assert status == 200, f"/healthz {status}: {body[:200]!r}"
        doc: dict[str, Any] = json.loads(body)
        return doc

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        status, body = _http_get(self.url + "/metrics", timeout=2.0)
        assert status == 200, f"/metrics {status}: {body[:200]!r}"
        return body.decode()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the switch reports no live calls (every call of a test has ended)."""
        deadline = time.monotonic() + timeout
        live = None
        while time.monotonic() < deadline:
            live = self.healthz().get("live_calls")
            if live in (0, None):
                return
            time.sleep(0.05)
        raise AssertionError(f"switch still has {live} live calls after {timeout}s")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain) and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                self.kill()
                raise AssertionError(
                    f"dce run ignored SIGTERM for {timeout}s\n{self.tail()}") from exc
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the switch (its embedded PostgreSQL, in its own session, survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """utime + stime of the switch process (all threads) from /proc/PID/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line the switch wrote to stderr (all starts)."""
        out: list[dict[str, Any]] = []
        for path in sorted(self.workdir.glob(f"{self.name}.*.stderr.jsonl")):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict):
                        out.append(doc)
        return out

    def tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path is not None and path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def problems(self, tracebacks_only: bool = False) -> list[str]:
        """Log lines at error level or above (with a traceback only, if asked): a switch bug
        or an input it did not handle. Warnings (e.g. asyncpg's during a database outage)
        are not problems."""
        bad = []
        for doc in self.logs():
            if doc.get("level") not in ("error", "critical"):
                continue
            if tracebacks_only and "exc" not in doc:
                continue
            bad.append(json.dumps(doc)[:2000])
        return bad


# ---------------------------------------------------------------------------------------------
# SIPp


@dataclass
class SippResult:
    rc: int
    name: str
    workdir: Path
    cmd: list[str]
    call_id: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def text(self, suffix: str) -> str:
        path = self.workdir / f"{self.name}{suffix}"
        return path.read_text(errors="replace") if path.exists() else ""

    def messages(self) -> str:
        return self.text("_msg.log")

    def describe(self) -> str:
        """What went wrong, for assertion messages: command, errors, the last messages."""
        msgs = self.messages()
        return (f"sipp {self.name} rc={self.rc}\n$ {' '.join(self.cmd)}\n"
                f"--- errors\n{self.text('_err.log')[-3000:]}\n"
                f"--- stdout (tail)\n{self.text('.out')[-1500:]}\n"
                f"--- messages (tail)\n{msgs[-4000:]}")


class Sipp:
    """One SIPp process (a UAS in the background, or a UAC that runs to completion)."""

    def __init__(self, name: str, workdir: Path, cmd: list[str], call_id: str) -> None:
        self.name = name
        self.workdir = workdir
        self.cmd = cmd
        self.call_id = call_id
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sipp:
        with (self.workdir / f"{self.name}.out").open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)
        return self

    def wait(self, timeout: float = 30.0) -> SippResult:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            rc = -9
        return SippResult(rc, self.name, self.workdir, self.cmd, self.call_id)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def sipp_command(scenario: str, name: str, *, port: int, remote: str | None = None,
                 local_ip: str = "127.0.0.1", transport: str = "u1", calls: int = 1,
                 timeout_s: int = 20, service: str = CALLED, extra: Sequence[str] = (),
                 cid: str | None = None, trace: bool = True) -> tuple[list[str], str]:
    """The SIPp command line for one of our scenarios; returns it and the first Call-ID."""
    if SIPP is None:
        raise RuntimeError("sipp not installed")
    path = scenario if "/" in scenario else str(SCENARIOS / scenario)
    cid = cid or f"it-{name}-{secrets.token_hex(4)}"
    cmd = [SIPP, "-sf", path, "-i", local_ip, "-p", str(port), "-m", str(calls),
           "-nostdin", "-t", transport, "-timeout", f"{timeout_s}s", "-timeout_error",
           "-cid_str", f"{cid}-%u", "-cp", str(free_port(local_ip))]
    if trace:
        cmd += ["-trace_msg", "-message_file", f"{name}_msg.log",
                "-trace_err", "-error_file", f"{name}_err.log"]
    if remote is not None:
        cmd += ["-s", service, remote]
    cmd += list(extra)
    return cmd, f"{cid}-1"


def start_uas(workdir: Path, scenario: str, port: int, *, name: str | None = None,
              transport: str = "u1", timeout_s: int = 20, extra: Sequence[str] = (),
              calls: int = 1) -> Sipp:
    """Start a SIPp UAS (a buyer) on 127.0.0.1:``port`` and wait until it listens."""
    name = name or f"uas-{port}"
    cmd, cid = sipp_command(scenario, name, port=port, transport=transport,
                            timeout_s=timeout_s, extra=extra, calls=calls)
    sipp = Sipp(name, workdir, cmd, cid).start()
    wait_bound(port, transport="udp" if transport.startswith("u") else "tcp")
    return sipp


def run_uac(workdir: Path, scenario: str, target: str, *, name: str | None = None,
            local_ip: str = "127.0.0.1", transport: str = "u1", service: str = CALLED,
            timeout_s: int = 20, extra: Sequence[str] = (), calls: int = 1) -> SippResult:
    """Run a SIPp UAC (a caller) against ``target`` (``host:port``) to completion."""
    name = name or f"uac-{secrets.token_hex(3)}"
    port = free_port(local_ip)
    cmd, cid = sipp_command(scenario, name, port=port, remote=target, local_ip=local_ip,
                            transport=transport, service=service, timeout_s=timeout_s,
                            extra=extra, calls=calls)
    return Sipp(name, workdir, cmd, cid).start().wait(timeout_s + 15)


def sip_headers(message_log: str, first_line_prefix: str) -> list[dict[str, str]]:
    """Header dicts (lower-case names) of the messages in a SIPp -trace_msg log whose first
    line starts with ``first_line_prefix`` (e.g. ``"SIP/2.0 480"``)."""
    found = []
    for block in re.split(r"\n-{20,}[^\n]*\n", message_log):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        # skip the "UDP message received [n] bytes :" line
        while lines and not (lines[0].startswith("SIP/2.0") or re.match(r"^[A-Z]+ \S+ SIP/2.0",
                                                                           lines[0])):
            lines.pop(0)
        if not lines or not lines[0].startswith(first_line_prefix):
            continue
        headers = {"_start": lines[0]}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers.setdefault(k.strip().lower(), v.strip())
        found.append(headers)
    return found


# ---------------------------------------------------------------------------------------------
# hand-written SIP


@dataclass
class SipMessage:
    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def status(self) -> int:
        parts = self.start.split(" ", 2)
        return int(parts[1]) if self.start.startswith("SIP/2.0 ") else 0

    @property
    def reason(self) -> str:
        parts = self.start.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_sip(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return SipMessage(lines[0], headers, body)


def build_request(method: str, uri: str, headers: Sequence[tuple[str, str]],
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {uri} SIP/2.0"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class SipSocket:
    """A UDP (or TCP) socket that speaks SIP to the switch and reads whole responses."""

    def __init__(self, target: tuple[str, int], local_ip: str = "127.0.0.1",
                 transport: str = "udp") -> None:
        self.target = target
        self.transport = transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.sock.bind((local_ip, 0))
        else:
            self.sock = socket.create_connection(target, timeout=5, source_address=(local_ip, 0))
        self.local = self.sock.getsockname()
        self._buf = b""

    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.target)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 3.0) -> SipMessage | None:
        """The next SIP message, or None when nothing arrived within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                data, _ = self.sock.recvfrom(65535)
                return parse_sip(data)
            deadline = time.monotonic() + timeout
            while True:
                msg = self._frame()
                if msg is not None:
                    return msg
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self._buf += chunk
        except TimeoutError:
            return None

    def _frame(self) -> SipMessage | None:
        self._buf = self._buf.lstrip(b"\r\n")
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", self._buf[:end])
        length = int(m.group(1)) if m else 0
        total = end + 4 + length
        if len(self._buf) < total:
            return None
        data, self._buf = self._buf[:total], self._buf[total:]
        return parse_sip(data)

    def recv_final(self, timeout: float = 5.0) -> tuple[SipMessage | None, list[SipMessage]]:
        """Read until a final response (>= 200); returns it and every message read."""
        seen: list[SipMessage] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            seen.append(msg)
            if msg.status >= 200:
                return msg, seen
        return None, seen

    def via(self, branch: str | None = None) -> tuple[str, str]:
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        return ("Via", f"SIP/2.0/{self.via_transport} {self.local[0]}:{self.local[1]};"
                       f"branch={branch};rport")

    def options(self, call_id: str | None = None) -> SipMessage | None:
        """Send OPTIONS outside a dialog and return the final response."""
        req = build_request("OPTIONS", f"sip:{self.target[0]}:{self.target[1]}", [
            self.via(),
            ("From", f"<sip:keepalive@{self.local[0]}>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:{self.target[0]}:{self.target[1]}>"),
            ("Call-ID", call_id or f"it-options-{secrets.token_hex(6)}"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ])
        self.send(req)
        final, _ = self.recv_final(3.0)
        return final


SDP_OFFER = (
    b"v=0\r\no=py 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


def digest_response(algorithm: str, username: str, realm: str, password: str, method: str,
                    uri: str, nonce: str, nc: str, cnonce: str, qop: str = "auth") -> str:
    """RFC 7616 §3.4.1 response for qop=auth (RFC 8760: MD5 or SHA-256), lower-case hex."""
    name = algorithm.upper()
    hname = {"MD5": "md5", "SHA-256": "sha256"}[name]

    def h(text: str) -> str:
        return hashlib.new(hname, text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def parse_challenge(value: str) -> dict[str, str]:
    """The parameters of one ``Digest ...`` challenge (names lower-case, quotes removed)."""
    scheme, _, rest = value.strip().partition(" ")
    assert scheme.lower() == "digest", value
    params = {}
    for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)', rest):
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[m.group(1).lower()] = v
    return params


@dataclass
class CallOutcome:
    challenge: SipMessage | None
    final: SipMessage | None
    seen: list[SipMessage]
    bye_response: SipMessage | None = None


class DigestUac:
    """A minimal Python caller: INVITE, answers one digest challenge, ACK, hold, BYE.

    It exists because SIPp 3.6 computes only MD5 digests; RFC 8760 SHA-256 needs our own code.
    """

    def __init__(self, sock: SipSocket, username: str, password: str, algorithm: str,
                 called: str = CALLED) -> None:
        self.sock = sock
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.call_id = f"it-digest-{algorithm.lower()}-{secrets.token_hex(5)}"
        self.from_tag = secrets.token_hex(5)
        host, port = sock.target
        self.uri = f"sip:{called}@{host}:{port}"
        self.local = f"{sock.local[0]}:{sock.local[1]}"

    def _invite(self, cseq: int, auth: str | None, branch: str) -> bytes:
        headers = [
            self.sock.via(branch),
            ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", f"<{self.uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<sip:{CALLER}@{self.local}>"),
            ("Max-Forwards", "70"),
        ]
        if auth is not None:
            headers.append(("Authorization", auth))
        headers.append(("Content-Type", "application/sdp"))
        return build_request("INVITE", self.uri, headers, SDP_OFFER)

    def _ack(self, uri: str, to: str, cseq: int, branch: str) -> bytes:
        return build_request("ACK", uri, [
            self.sock.via(branch), ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", to), ("Call-ID", self.call_id), ("CSeq", f"{cseq} ACK"),
            ("Max-Forwards", "70")])

    def authorization(self, challenge: SipMessage) -> str:
        offers = [parse_challenge(v) for v in challenge.all("WWW-Authenticate")]
        chosen = [o for o in offers if o.get("algorithm", "MD5").upper() == self.algorithm]
        assert chosen, f"no {self.algorithm} challenge among {offers}"
        c = chosen[0]
        cnonce, nc = secrets.token_hex(8), "00000001"
        resp = digest_response(self.algorithm, self.username, c["realm"], self.password,
                               "INVITE", self.uri, c["nonce"], nc, cnonce)
        return (f'Digest username="{self.username}", realm="{c["realm"]}", '
                f'nonce="{c["nonce"]}", uri="{self.uri}", response="{resp}", '
                f'algorithm={self.algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"')

    def call(self, hold: float = 0.3, timeout: float = 8.0) -> CallOutcome:
        b1 = "z9hG4bK" + secrets.token_hex(8)
        self.sock.send(self._invite(1, None, b1))
        first, seen = self.sock.recv_final(timeout)
        if first is None or first.status != 401:
            return CallOutcome(None, first, seen)
        self.sock.send(self._ack(self.uri, first.header("To") or "", 1, b1))
        b2 = "z9hG4bK" + secrets.token_hex(8)
        self.sock.send(self._invite(2, self.authorization(first), b2))
        final, seen2 = self.sock.recv_final(timeout)
        outcome = CallOutcome(first, final, seen + seen2)
        if final is None:
            return outcome
        to = final.header("To") or ""
        if final.status >= 300:
            self.sock.send(self._ack(self.uri, to, 2, b2))
            return outcome
        contact = final.header("Contact") or f"<{self.uri}>"
        target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else contact
        self.sock.send(self._ack(target, to, 2, "z9hG4bK" + secrets.token_hex(8)))
        time.sleep(hold)
        self.sock.send(build_request("BYE", target, [
            self.sock.via(), ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", to), ("Call-ID", self.call_id), ("CSeq", "3 BYE"), ("Max-Forwards", "70")]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.sock.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            if msg.status and "BYE" in (msg.header("CSeq") or ""):
                outcome.bye_response = msg
                break
        return outcome


# ---------------------------------------------------------------------------------------------
# a TCP proxy in front of PostgreSQL that can be cut


class PgProxy:
    """Forwards ``127.0.0.1:port`` to an upstream TCP address, in its own thread and loop.

    ``cut()`` closes the listener and every proxied connection (the database "goes away":
    connects are refused, open connections reset); ``restore()`` listens again on the same port.
    """

    def __init__(self, upstream: tuple[str, int] | Path) -> None:
        self.upstream = upstream  # (host, port), or the path of a Unix socket
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def __enter__(self) -> PgProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the proxy's loop (its thread) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    _run = run

    def restore(self) -> None:
        async def go() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                      reuse_address=True)
        self._run(go())

    def cut(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._writers.clear()
        self._run(go())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if isinstance(self.upstream, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def upstream_of(url: str) -> tuple[str, int]:
    m = re.match(r"^postgres(?:ql)?://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?", url)
    if m is None:
        raise ValueError(f"cannot find host:port in {url!r}")
    return m.group(1), int(m.group(2) or 5432)


def via_port(url: str, port: int) -> str:
    """``url`` pointing at 127.0.0.1:``port`` instead of its own host and port."""
    return re.sub(r"^(postgres(?:ql)?://(?:[^@/]*@)?)[^/?]*", rf"\g<1>127.0.0.1:{port}", url)


@contextlib.contextmanager
def timed(label: str, limit: float) -> Iterator[None]:
    """Assert that the block finished within ``limit`` seconds."""
    t0 = time.monotonic()
    yield
    elapsed = time.monotonic() - t0
    assert elapsed <= limit, f"{label} took {elapsed:.1f}s (limit {limit}s)"


class UdpWatcher:
    """A UDP socket on a buyer port that answers nothing: proves no request reached it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))

    def received(self, wait: float = 0.5) -> list[bytes]:
        got = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(65535))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.sock.close()
