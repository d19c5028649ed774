"""SIPp as a real peer: the scenarios of ``sipp_scenarios/`` run one call at a time.

:func:`run_uac` runs a caller to completion and :func:`start_uas` starts a buyer in the
background (``-m 1``, unique ``-cid_str``, ``-timeout``), judged by exit code;
:func:`sip_headers` reads the messages back from a ``-trace_msg`` log.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port, wait_bound

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "sipp_scenarios"
CALLED = "18005550100"  # campaign number of the default test config, without the plus
CALLER = "+13122600123"  # From user in every sipp_scenarios/uac*.xml (a valid, assignable number)
SIPP = shutil.which("sipp")


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
