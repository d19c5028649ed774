"""store/pgbinaries.py: running programs, as dce-postgres when root, from a snapshot.

The server these tests start must leak nothing out of DCE_DATA_DIR, nor inherit our descriptors.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import asyncpg
import pytest

from store.embedded import EmbeddedPostgres
from store.errors import EmbeddedPostgresError
from store.pgbinaries import run, server_user
from tests.store.conftest import PGINSTALL, needs_pgserver, postmaster_pid, query

pytestmark = needs_pgserver


async def test_run_returns_exit_code_and_output() -> None:
    assert await run(["sh", "-c", "echo out; echo err >&2"]) == (0, "out\nerr\n")
    assert (await run(["sh", "-c", "exit 3"], check=False))[0] == 3
    with pytest.raises(EmbeddedPostgresError, match="exit 3"):
        await run(["sh", "-c", "exit 3"])
    with pytest.raises(EmbeddedPostgresError, match="took more than"):
        await run(["sleep", "5"], timeout=0.1)


async def test_run_as_the_server_user() -> None:
    user = await server_user()
    rc, out = await run(["id", "-u"], user=user)
    assert (rc, out.strip()) == (0, str(user.uid))
    assert bool(user.prefix) == (os.geteuid() == 0)  # a user switch only when root


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
