"""Kamailio as a real subprocess running the shipped ``config/kamailio/kamailio.cfg``.

:class:`Kamailio` writes a dispatcher list naming the given ``dce run`` instances, starts
``kamailio`` in the foreground with the shipped config (its ``-A`` defines put the socket on a
free port, the list, the control socket and the runtime directory under the test's
directory), waits until it listens, and can ask it (``kamcmd``) which instances it holds up.
Used by tests/integration/test_cluster.py and bench/bench_cluster.py.

One SIP worker by default (``children``): with several, Kamailio relays a reply after it lets
go of the transaction's lock, so on a busy machine an instance's 180 can overtake the 200 sent
right after it. A real phone ignores a late 18x (RFC 6026); SIPp's scenarios fail the call.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port, port_bound

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "kamailio" / "kamailio.cfg"
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
KAMCMD = shutil.which("kamcmd") or (
    "/usr/sbin/kamcmd" if Path("/usr/sbin/kamcmd").exists() else None)


@dataclass
class Kamailio:
    """One ``kamailio`` process in front of ``instances`` (``host:port`` of each switch)."""

    workdir: Path
    instances: Sequence[str]
    host: str = "127.0.0.2"
    port: int = 0
    children: int = 1
    ping_interval: int = 1
    failover_ms: int = 2000
    shm_mb: int = 256  # transactions live 5 s after they end: some 170 KB per call/s
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.run_dir = self.workdir / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.list_path = self.workdir / "dispatcher.list"
        self.ctl = f"unix:{self.run_dir / 'kamailio_ctl'}"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        if KAMAILIO is None:
            raise RuntimeError("kamailio not installed (Debian package kamailio)")
        defines = {
            "DCE_LISTEN": f"udp:{self.host}:{self.port}",
            "DCE_DS_LIST": f'"{self.list_path}"',
            "DCE_CTL": f'"{self.ctl}"',
            "DCE_CHILDREN": str(self.children),
            "DCE_PING_INTERVAL": str(self.ping_interval),
            "DCE_FAILOVER_MS": str(self.failover_ms),
        }
        cmd = [KAMAILIO, "-DD", "-E", "-f", str(CONFIG), "-Y", str(self.run_dir),
               "-P", str(self.run_dir / "kamailio.pid"), "-m", str(self.shm_mb), "-M", "8"]
        for name, value in defines.items():
            cmd += ["-A", f"{name}={value}"]
        return cmd + self.extra

    def start(self, timeout: float = 15.0) -> Kamailio:
        self.list_path.write_text("".join(f"1 sip:{addr}\n" for addr in self.instances))
        self.log_path = self.workdir / "kamailio.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_bound(self.port, self.host):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kamailio exited with {self.proc.returncode}\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"kamailio not listening after {timeout}s\n{self.tail()}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def states(self) -> dict[str, str]:
        """``kamcmd dispatcher.list``: each instance (``host:port``) and its flags (``AP``:
        active and probed; ``IP``: inactive; ``TP``: trying)."""
        if KAMCMD is None:
            raise RuntimeError("kamcmd not installed (Debian package kamailio)")
        out = subprocess.run([KAMCMD, "-s", self.ctl, "dispatcher.list"], capture_output=True,
                             text=True, timeout=5, check=True).stdout
        found = re.findall(r"URI:\s*sip:(\S+)\s+FLAGS:\s*(\S+)", out)
        return dict(found)

    def wait_states(self, want: dict[str, str], timeout: float = 15.0) -> dict[str, str]:
        """Wait until each named instance's flags start with the wanted letter (A, I, T)."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if all(states.get(k, "").startswith(v) for k, v in want.items()):
                return states
            time.sleep(0.1)
        raise AssertionError(f"dispatcher states {states}, wanted {want} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "--- kamailio.log\n" + "\n".join(text)
