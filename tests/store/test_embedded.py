"""store/embedded.py: real PostgreSQL processes, started, killed and recovered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from store.embedded import SOCKET_NAME, EmbeddedPostgres, find_pginstall, socket_dir_for
from store.errors import EmbeddedPostgresError

REPO = Path(__file__).resolve().parents[2]

try:
    PGINSTALL: Path | None = find_pginstall()
except EmbeddedPostgresError:
    PGINSTALL = None
pytestmark = pytest.mark.skipif(PGINSTALL is None, reason="pgserver wheel not installed")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A temp dir the server's user may enter (mkdtemp is 0700; as root that user is not us)."""
    d = Path(tempfile.mkdtemp(prefix="dce-pgembed-"))
    d.chmod(0o755)
    yield d
    for pid_file in d.glob("*/pg/postmaster.pid"):
        kill_postmaster(pid_file.parent.parent)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_dir(base: Path) -> Path:
    """One cluster for the module: initdb costs ~0.7 s, so tests reuse it (stopped between)."""
    return base / "shared"


@pytest.fixture
async def data_dir(shared_dir: Path) -> AsyncIterator[Path]:
    yield shared_dir
    # Whatever the test did, leave no server behind: reattach to any survivor, then stop it.
    pg = EmbeddedPostgres(shared_dir)
    try:
        await pg.start()
        await pg.stop()
    except EmbeddedPostgresError:
        kill_postmaster(shared_dir)  # a failed test still holds the dir lock
        raise


def kill_postmaster(data_dir: Path) -> None:
    """Immediate shutdown (SIGQUIT) of a server a failed test left running."""
    try:
        pid = postmaster_pid(data_dir)
    except (OSError, ValueError, IndexError):
        return
    if alive(pid):
        os.kill(pid, signal.SIGQUIT)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False


async def query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


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


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only: the server runs as dce-postgres")
async def test_as_root_nothing_outside_the_data_dir_changes(data_dir: Path) -> None:
    assert PGINSTALL is not None
    watched = [PGINSTALL, PGINSTALL / "bin", *PGINSTALL.parents, data_dir.parent]
    before = {p: (p.stat().st_mode, p.stat().st_uid) for p in watched}
    pg = EmbeddedPostgres(data_dir)
    dsn = await pg.start()
    try:
        import pwd

        user = pwd.getpwnam("dce-postgres")
        assert user.pw_shell.endswith("nologin")
        for d in (data_dir / "pg", pg.socket_dir):
            st = d.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o700)
        # The server runs the snapshot inside DCE_DATA_DIR, not the venv's binaries.
        exe = os.readlink(f"/proc/{postmaster_pid(data_dir)}/exe")
        assert exe.startswith(str(data_dir / "pgbin"))
        assert await query(dsn, "SELECT 1") == 1
    finally:
        await pg.stop()
    assert {p: (p.stat().st_mode, p.stat().st_uid) for p in watched} == before


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only: the server runs as dce-postgres")
async def test_as_root_a_closed_ancestor_is_named_not_opened(base: Path) -> None:
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    with pytest.raises(EmbeddedPostgresError, match=f"{closed} .*not traversable"):
        await EmbeddedPostgres(closed / "data").start()
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700


def _open_inodes(pid: int | str) -> set[str]:
    """Sockets and pipes a process holds, as 'socket:[123]' / 'pipe:[456]'."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(("socket:", "pipe:")):
                found.add(target)
    return found


def test_under_uvloop_the_server_inherits_nothing_from_the_switch(shared_dir: Path) -> None:
    # `dce run` uses uvloop, whose subprocess API leaks descriptors into children: the
    # postmaster must hold none of our sockets or pipes (it once held pg_ctl's output pipe,
    # and start() never returned).
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> set[str]:
        pg = EmbeddedPostgres(shared_dir, start_timeout=20)
        dsn = await pg.start()
        try:
            conn = await asyncpg.connect(dsn)  # one socket of ours exists while we look
            try:
                return _open_inodes(postmaster_pid(shared_dir)) & _open_inodes("self")
            finally:
                await conn.close()
        finally:
            await pg.stop()

    assert uvloop.run(scenario()) == set()
