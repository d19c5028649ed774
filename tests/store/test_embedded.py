"""store/embedded.py: real PostgreSQL processes, started, killed and recovered.

Running as dce-postgres, the binary snapshot and the subprocesses: test_pgbinaries.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from store.embedded import SOCKET_NAME, EmbeddedPostgres, socket_dir_for
from store.errors import EmbeddedPostgresError
from tests.store.conftest import alive, needs_pgserver, postmaster_pid, query

REPO = Path(__file__).resolve().parents[2]

pytestmark = needs_pgserver


async def test_start_stop_are_idempotent(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    dsn = await pg.start()
    assert await pg.start() == dsn
    assert await query(dsn, "SELECT current_user") == "postgres"
    assert await query(dsn, "SHOW listen_addresses") == ""  # no TCP at all
    assert await query(dsn, "SHOW server_encoding") == "UTF8"
    pid = postmaster_pid(data_dir)
    await pg.stop()
    await pg.stop()
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    assert not alive(pid)
    assert pg.dsn is None


async def test_run_twice_in_a_row_keeps_data(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    dsn = await pg.start()
    await query(dsn, "CREATE TABLE IF NOT EXISTS kept AS SELECT 42 AS x")
    await pg.stop()
    pg2 = EmbeddedPostgres(data_dir)
    dsn2 = await pg2.start()
    assert await query(dsn2, "SELECT max(x) FROM kept") == 42
    await pg2.stop()


async def test_a_second_owner_is_refused(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    await pg.start()
    with pytest.raises(EmbeddedPostgresError, match="in use by another"):
        await EmbeddedPostgres(data_dir).start()
    await pg.stop()


async def test_kill_9_of_the_owner_then_start_reattaches(data_dir: Path) -> None:
    child = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from store.embedded import EmbeddedPostgres

        async def main():
            print(await EmbeddedPostgres(Path({str(data_dir)!r})).start(), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        dsn = (await proc.stdout.readline()).decode().strip()
    os.kill(proc.pid, signal.SIGKILL)  # the switch dies hard; its postgres does not
    await proc.wait()
    survivor = postmaster_pid(data_dir)
    assert alive(survivor)

    pg = EmbeddedPostgres(data_dir)
    assert await pg.start() == dsn
    assert postmaster_pid(data_dir) == survivor  # reattached, not a second server
    assert await query(dsn, "SELECT 1") == 1
    await pg.stop()
    assert not alive(survivor)


@pytest.mark.parametrize("kind", ["dead", "reused"])
async def test_stale_postmaster_pid_is_cleared(data_dir: Path, kind: str) -> None:
    pg = EmbeddedPostgres(data_dir)
    await pg.start()
    pid_file = data_dir / "pg" / "postmaster.pid"
    sock_lock = pg.socket_dir / (SOCKET_NAME + ".lock")
    pid_text, lock_text = pid_file.read_text(), sock_lock.read_text()
    await pg.stop()

    # "dead": a PID that exited; "reused": a live process that is not postgres (after a
    # reboot PIDs are handed out again, and PostgreSQL itself would refuse to start).
    other = await asyncio.create_subprocess_exec("sleep", "30")
    if kind == "dead":
        other.kill()
        await other.wait()
    fake = str(other.pid)
    pid_file.write_text(fake + pid_text[pid_text.index("\n") :])
    sock_lock.write_text(fake + lock_text[lock_text.index("\n") :])
    try:
        pg2 = EmbeddedPostgres(data_dir)
        dsn = await pg2.start()
        assert await query(dsn, "SELECT 1") == 1
        assert postmaster_pid(data_dir) != other.pid
        await pg2.stop()
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()


def test_socket_dir_is_short() -> None:
    short = Path("/var/lib/dce")
    assert socket_dir_for(short) == short / "run"
    long = Path("/srv/" + "x" * 100)
    d = socket_dir_for(long)
    assert d.parent == Path("/tmp") and d.name.startswith("dce-pg-") and len(d.name) == 23
    assert socket_dir_for(long) == d  # stable across runs: the next start finds the server
    assert socket_dir_for(Path("/srv/" + "y" * 100)) != d


async def test_long_data_dir_uses_a_private_tmp_socket_dir(base: Path) -> None:
    data = base / ("long-" + "d" * 90)
    pg = EmbeddedPostgres(data)
    try:
        dsn = await pg.start()
        sock = pg.socket_dir
        assert sock.parent == Path("/tmp")
        st = sock.lstat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and not stat.S_ISLNK(st.st_mode)
        assert await query(dsn, "SELECT 1") == 1
    finally:
        await pg.stop()
        shutil.rmtree(pg.socket_dir, ignore_errors=True)
