"""The default database, end to end: no DCE_DATABASE_URL, an embedded PostgreSQL under
DCE_DATA_DIR (issue 3 "Embedded database done properly").

One data dir, three lives of `dce run`: a first start (initdb), a call, SIGTERM; a second start
on the same dir, a call; ``kill -9`` of the switch (its PostgreSQL survives, in its own
session), a third start that must recover, a call, SIGTERM. Every CDR must be there and no
PostgreSQL may be left running for the data dir at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch, wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, run_uac, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration


def postgres_pids(data_dir: Path) -> list[int]:
    """PIDs of processes whose command line names this data dir's cluster."""
    pg = str((data_dir / "pg").resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and pg in cmdline:
            pids.append(int(proc.name))
    return pids


def wait_no_postgres(data_dir: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := postgres_pids(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pids, f"PostgreSQL still running for {data_dir} after the switch stopped: {pids}"


def one_call(sw: Switch, buyer_port: int, workdir: Path, name: str) -> str:
    buyer = start_uas(workdir, "uas.xml", buyer_port, name=f"uas-{name}")
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name=f"uac-{name}",
                         extra=["-d", "100"])
        served = buyer.wait(15)
    finally:
        buyer.kill()
    assert caller.ok, caller.describe() + "\n" + sw.tail(20)
    assert served.ok, served.describe()
    cdr = wait_cdr(sw.dsn, caller.call_id)
    assert cdr["disposition"] == "answered" and cdr["sip_status"] == 200, cdr
    return caller.call_id


def test_embedded_database_restart_and_kill_9(switches: object, sipp: str,
                                              workdir: Path) -> None:
    buyer_port = free_port()
    config = dce_process.one_buyer(buyer_port, CALLED)
    sw: Switch = switches(config, name="embedded", embedded=True, start=False)  # type: ignore[operator]
    assert sw.data_dir is not None
    sw.start(timeout=90)
    assert "embedded" in sw.healthz().get("database", "embedded"), sw.healthz()
    first = one_call(sw, buyer_port, workdir, "first")
    assert sw.stop() == 0, sw.tail()
    wait_no_postgres(sw.data_dir)

    sw.start(timeout=60)  # same data dir, right after a clean stop
    second = one_call(sw, buyer_port, workdir, "second")

    sw.kill()  # kill -9: no drain; the embedded server is left behind
    sw.start(timeout=60)  # reattach to (or restart) the orphaned server
    third = one_call(sw, buyer_port, workdir, "third")
    ids = {r["a_call_id"] for r in fetch(sw.dsn, "SELECT a_call_id FROM cdrs")}
    assert {first, second, third} <= ids, ids
    assert sw.stop() == 0, sw.tail()
    wait_no_postgres(sw.data_dir)
