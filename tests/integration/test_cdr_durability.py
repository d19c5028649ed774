"""No CDR is lost or written twice: the database goes away during calls and comes back.

A TCP proxy (PgProxy) sits between `dce run` and PostgreSQL. A batch of SIPp calls
runs; in the middle the proxy is cut (connects refused, open connections reset), then
restored; the switch is stopped with SIGTERM (drain, flush). The ``cdrs`` table must then hold
exactly one row per call, and the switch must have spooled some of them (else the outage never
reached the CDR writer and the test proved nothing).

The database is a fresh one on DCE_TEST_DATABASE_URL's server; without that variable, a
throwaway embedded PostgreSQL (store.embedded, Unix socket only) started by the test, which
the proxy reaches through its socket.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import create_database, drop_database, fetch
from tests.integration.pgproxy import PgProxy, upstream_of, via_port
from tests.integration.sipp import CALLED, Sipp, sipp_command, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

CALLS = 40
RATE = 10


@contextlib.contextmanager
def proxied_database(server_url: str | None) -> Iterator[tuple[PgProxy, str, str]]:
    """(proxy, URL for the switch through the proxy, direct URL for counting rows)."""
    if server_url is not None:
        db_url = create_database(server_url, prefix="dce_it_outage")
        try:
            with PgProxy(upstream_of(db_url)) as proxy:
                yield proxy, via_port(db_url, proxy.port), db_url
        finally:
            drop_database(server_url, db_url)
        return
    from store.embedded import PG_PORT, EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="dce-it-outage-pg-"))
    embedded = EmbeddedPostgres(data_dir)
    try:
        with PgProxy(embedded.socket_dir / f".s.PGSQL.{PG_PORT}") as proxy:
            direct = proxy.run(embedded.start(), timeout=120)
            try:
                yield proxy, f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", direct
            finally:
                proxy.run(embedded.stop(), timeout=60)
    finally:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)


def test_database_outage_during_calls_loses_no_cdr(switches: object, server_url: str | None,
                                                   sipp: str, workdir: Path) -> None:
    with proxied_database(server_url) as (proxy, switch_url, direct_url):
        buyer_port = free_port()
        config = dce_process.one_buyer(buyer_port, CALLED)
        sw = switches(config, name="outage", database_url=switch_url)  # type: ignore[operator]
        buyer = start_uas(workdir, "uas.xml", buyer_port, calls=CALLS, timeout_s=60)
        cmd, first = sipp_command("uac.xml", "uac-batch", port=free_port(),
                                  remote=sw.sip_addr, calls=CALLS, timeout_s=60,
                                  extra=["-r", str(RATE), "-d", "200"])
        prefix = first.rsplit("-", 1)[0]
        caller = Sipp("uac-batch", workdir, cmd, first).start()
        time.sleep(1.0)
        proxy.cut()
        time.sleep(2.5)  # about 25 calls end while the database is unreachable
        proxy.restore()
        result = caller.wait(60)
        served = buyer.wait(20)
        assert result.ok, result.describe()
        assert served.ok, served.describe()
        sw.wait_idle()
        assert sw.stop() == 0, sw.tail()
        closed = [d for d in sw.logs() if d.get("msg") == "CDR writer closed"]
        spooled = sum(int(d.get("spooled", 0)) for d in closed)
        rows = fetch(direct_url, "SELECT count(*) AS n, count(DISTINCT call_id) AS u "
                                 "FROM cdrs WHERE a_call_id LIKE $1", prefix + "-%")
    n, unique = rows[0]["n"], rows[0]["u"]
    assert (n, unique) == (CALLS, CALLS), (
        f"{n} CDR rows ({unique} distinct) for {CALLS} calls; writer: {closed}\n{sw.tail(30)}")
    assert spooled > 0, f"the outage never reached the CDR writer (nothing spooled): {closed}"
