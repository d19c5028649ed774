"""``dce run`` as a real subprocess (:class:`Switch`), and the config files it is started with.

:class:`Switch` starts ``dce run`` with a generated TOML config, free ports, a temporary
DCE_DATA_DIR, and waits for ``/healthz``; ``stop()`` sends SIGTERM and returns the exit code.
:func:`ip_trunk`, :func:`digest_trunk`, :func:`campaign` and :func:`buyer` build the parts of
that config; :func:`to_toml` writes it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.db import embedded_dsn
from tests.ports import free_port, free_port_range


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


def one_buyer(buyer_port: int, called: str) -> dict[str, Any]:
    """The usual test exchange: one IP trunk for 127.0.0.1, one campaign owning ``called``, one
    buyer (no profiles: it takes every call) on 127.0.0.1:``buyer_port``."""
    return {
        "trunks": [ip_trunk()],
        "campaigns": [campaign("main", ["+" + called])],
        "buyers": [buyer("b1", [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }


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
            # Buyers here are mostly SIPp UASes, which fail their scenario on an OPTIONS
            # probe: probing is on only where a test asks (test_endpoint_health.py).
            "DCE_PROBE_INTERVAL": "0",
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
        """The JSON of ``/healthz``, whether it says 200 ok or 503 (e.g. database down)."""
        return self.health()[1]

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, JSON) of ``/healthz``: 200 ok, or 503 with ``problems``."""
        status, body = _http_get(self.url + "/healthz", timeout=2.0)
        assert status in (200, 503), f"/healthz {status}: {body[:200]!r}"
        doc: dict[str, Any] = json.loads(body)
        return status, doc

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
