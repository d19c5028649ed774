"""Calls between SIP stacks the project did not write (issue 3, research/libs.md §4).

The buyer is baresip, auto-answering (``answermode=auto``) and playing a 2-second WAV; at the
end of the file baresip hangs up, so every call here ends with a BYE from the buyer side.
Callers: SIPp (``uac-expect-bye.xml``) and linphonec (``-s`` dials at start-up).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch, wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, run_uac
from tests.ports import free_port, free_port_range, wait_bound

pytestmark = pytest.mark.integration

BARESIP = shutil.which("baresip")
LINPHONEC = shutil.which("linphonec")
SOX = shutil.which("sox")
MODULES = Path("/usr/lib/baresip/modules")
WAV_SECONDS = 2


def _baresip_config(root: Path, port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    wav = root / "tone.wav"
    subprocess.run([SOX or "sox", "-n", "-r", "8000", "-c", "1", "-b", "16", "-e",
                    "signed-integer", str(wav), "synth", str(WAV_SECONDS), "sine", "440"],
                   check=True, timeout=20)
    rtp_lo, rtp_hi = free_port_range(40)
    (root / "config").write_text(
        f"poll_method\tepoll\nsip_listen\t127.0.0.1:{port}\nnet_interface\t127.0.0.1\n"
        f"audio_player\taubridge,x\naudio_source\taufile,{wav}\naudio_alert\taubridge,x\n"
        f"rtp_ports\t{rtp_lo}-{rtp_hi}\nmodule_path\t{MODULES}\n"
        "module\tg711.so\nmodule\taufile.so\nmodule\taubridge.so\n"
        "module_app\taccount.so\nmodule_app\tmenu.so\n")
    # The Request-URI user must match the account, else baresip answers 404.
    (root / "accounts").write_text(
        "<sip:buyer@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU\n")
    return root


@pytest.fixture(scope="module")
def baresip_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def baresip(tmp_path_factory: pytest.TempPathFactory, baresip_port: int) -> Iterator[Path]:
    if BARESIP is None or not MODULES.is_dir():
        pytest.skip("baresip (Debian package baresip) is not installed")
    if SOX is None:
        pytest.skip("sox is not installed (needed for baresip's WAV)")
    root = _baresip_config(tmp_path_factory.mktemp("baresip"), baresip_port)
    with (root / "baresip.out").open("wb") as out:
        proc = subprocess.Popen([BARESIP, "-4", "-f", str(root), "-t", "170"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_bound(baresip_port, timeout=10)
        yield root
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def sw(switches: object, baresip: Path, baresip_port: int) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("bare", [f"sip:buyer@127.0.0.1:{baresip_port}"])],
    }
    return switches(config, name="thirdparty")  # type: ignore[operator,no-any-return]


def test_sipp_caller_baresip_buyer(sw: Switch, sipp: str, baresip: Path,
                                   workdir: Path) -> None:
    caller = run_uac(workdir, "uac-expect-bye.xml", sw.sip_addr, name="uac-to-baresip",
                     timeout_s=15)
    assert caller.ok, caller.describe() + "\n" + (baresip / "baresip.out").read_text()[-2000:]
    cdr = wait_cdr(sw.dsn, caller.call_id)
    assert cdr["disposition"] == "answered" and cdr["hangup_side"] == "buyer", cdr
    assert WAV_SECONDS * 1000 - 500 <= cdr["duration_ms"] <= WAV_SECONDS * 1000 + 3000, cdr
    sw.wait_idle()


def test_linphonec_caller_baresip_buyer(sw: Switch, baresip: Path, workdir: Path) -> None:
    if LINPHONEC is None:
        pytest.skip("linphonec (Debian package linphone-cli) is not installed")
    home = workdir / "home"
    (home / ".local/share/linphone").mkdir(parents=True)  # its call-log database lives here
    port = free_port()
    rtp_lo, _ = free_port_range(20)
    rc = home / "uac.rc"
    # ipv6_migration_done + use_ipv6=0: else the first run rewrites the rc to IPv6 (libs.md).
    rc.write_text(
        "[sip]\n"
        f"sip_port={port}\nsip_tcp_port=-1\nsip_tls_port=-1\nbind_address=127.0.0.1\n"
        f"ipv6_migration_done=1\nuse_ipv6=0\ncontact=sip:{CALLER}@127.0.0.1\n"
        "guess_hostname=0\n"
        f"[rtp]\naudio_rtp_port={rtp_lo}\nvideo_rtp_port={rtp_lo + 10}\n"
        "[sound]\nechocancellation=0\n")
    before = {r["call_id"] for r in fetch(sw.dsn, "SELECT call_id FROM cdrs")}
    out_path = workdir / "linphonec.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [LINPHONEC, "-c", str(rc), "-d", "3", "-l", str(workdir / "linphonec.log"),
             "-s", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            if " ended" in text or " error" in text.lower():
                break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(OSError):  # it may already be gone
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = out_path.read_text(errors="replace")
    assert " connected" in text and " ended" in text, text[-3000:]
    deadline = time.monotonic() + 8
    new: list[dict[str, object]] = []
    while time.monotonic() < deadline and not new:
        new = [r for r in fetch(sw.dsn, "SELECT * FROM cdrs") if r["call_id"] not in before]
        time.sleep(0.1)
    assert len(new) == 1, new
    cdr = new[0]
    assert cdr["disposition"] == "answered" and cdr["hangup_side"] == "buyer", cdr
    assert cdr["caller"] == CALLER and cdr["b_call_id"] != cdr["a_call_id"], cdr
    sw.wait_idle()
