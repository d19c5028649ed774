"""The embedded server's PostgreSQL programs: which copy runs, as which user, and how.

:mod:`store.embedded` owns the cluster (initdb, start, stop, recovery) and asks this module for
three things: the user the programs run as (:func:`server_user`, :func:`check_traversable`),
the directory of the programs (:func:`server_binaries`), and a way to run one to completion
(:func:`run`). The binaries are the PostgreSQL 16 build shipped inside the ``pgserver`` wheel
(``pgserver/pginstall``, found by :func:`find_pginstall` without importing pgserver).

Theory of operation
-------------------
Not root: everything runs as the current user, from the venv in place.

Root. PostgreSQL refuses to run as root, so when DCE runs as root the server runs as the system
user ``dce-postgres``, created once with ``useradd --system --user-group --no-create-home
--shell /usr/sbin/nologin`` (it cannot log in and owns nothing outside DCE_DATA_DIR). Commands
switch to it through ``setpriv`` (util-linux; ``runuser`` as a fallback) because uvloop's
subprocess API has no ``user=``: :class:`ServerUser` carries that argv prefix. ``data_dir``
itself gets o+x (search, not list) when it has none; store.embedded chowns ``data_dir/pg`` and
the socket dir to the user. Nothing outside DCE_DATA_DIR is ever chmodded or chowned: an
ancestor the user cannot traverse is an error naming the directory. The binaries are
snapshotted into ``data_dir/pgbin`` because the venv often lives under a 0700 home
(``/root``); hardlinks make that free on the same filesystem, and PostgreSQL finds ``share/``
and ``lib/`` relative to the executable's path, so the snapshot is self-contained. (Symlinks
would not do: PostgreSQL resolves them back to the venv.) The snapshot records its source
(path, inode, size, mtime of ``bin/postgres``) and is rebuilt only when that changes.

Running a program. ``subprocess.Popen`` polled from the loop, in a new session, with every
descriptor but stdio closed (see :func:`run_program` for why not asyncio's subprocess API), and
a fixed environment (``LC_ALL=C``, ``TZ=UTC``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from store.errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

RUN_AS_USER = "dce-postgres"
_SNAPSHOT_DIRS = ("bin", "lib", "share")  # include/ is only for building extensions


@dataclass(frozen=True, slots=True)
class ServerUser:
    """Who runs the PostgreSQL programs, and the argv prefix that switches to that user."""

    uid: int
    gid: int
    name: str
    prefix: tuple[str, ...]  # () when no switch is needed (not root)


def find_pginstall() -> Path:
    """Where the ``pgserver`` wheel keeps its PostgreSQL build, without importing pgserver."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded database needs the pgserver package (no wheel for this platform?); "
            "set DCE_DATABASE_URL to use an external PostgreSQL instead"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (root / "bin" / "postgres").is_file():
        raise EmbeddedPostgresError(f"{root}/bin/postgres is missing: broken pgserver install")
    return root


# -- who runs PostgreSQL -----------------------------------------------------------------------


async def server_user(run_as: str = RUN_AS_USER) -> ServerUser:
    """The current user when not root; as root, ``run_as`` (created if missing)."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return ServerUser(os.geteuid(), os.getegid(), pw.pw_name, ())
    pw = await _ensure_user(run_as)
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefix: tuple[str, ...] = (
            setpriv,
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--clear-groups",
            "--",
        )
    elif (runuser := shutil.which("runuser")) is not None:
        prefix = (runuser, "-u", pw.pw_name, "--")
    else:
        raise EmbeddedPostgresError(
            "running as root needs setpriv or runuser (util-linux) to run PostgreSQL as "
            f"{pw.pw_name}; install util-linux, run DCE as a normal user, or set "
            "DCE_DATABASE_URL"
        )
    return ServerUser(pw.pw_uid, pw.pw_gid, pw.pw_name, prefix)


async def _ensure_user(run_as: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(run_as)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and user {run_as!r} does not exist; "
            "create it (no useradd here) or run DCE as a normal user"
        )
    nologin = next(
        (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false"
    )
    logger.warning("creating system user %s to run the embedded PostgreSQL", run_as)
    rc, out = await run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            "--comment",
            "DCE embedded PostgreSQL",
            run_as,
        ],
        check=False,
    )
    try:
        return pwd.getpwnam(run_as)  # also fine when another process won the race
    except KeyError:
        raise EmbeddedPostgresError(f"useradd {run_as} failed (exit {rc}): {out.strip()}") from None


def check_traversable(data_dir: Path, user: ServerUser) -> None:
    """Fail naming the first ancestor of data_dir the server's user cannot enter."""
    for d in reversed([data_dir, *data_dir.parents]):
        st = d.stat()
        if _can_search(st, user):
            continue
        if d == data_dir:
            # DCE_DATA_DIR is ours: grant search (not listing) so the user reaches pg/.
            logger.info("adding o+x to %s so %s can reach pg/", d, user.name)
            os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            continue
        raise EmbeddedPostgresError(
            f"{d} (mode {stat.S_IMODE(st.st_mode):04o}) is not traversable by user "
            f"{user.name}, which runs the embedded PostgreSQL because PostgreSQL refuses "
            f"root; DCE never changes permissions outside DCE_DATA_DIR. Choose a "
            f"DCE_DATA_DIR outside {d}, or allow it with: chmod o+x {d}"
        )


def _can_search(st: os.stat_result, user: ServerUser) -> bool:
    # Mode bits as the kernel applies them (owner, then group, then other). A directory that an
    # ACL opens anyway is reported as closed: rare, and the error says how to fix it.
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


# -- binaries ----------------------------------------------------------------------------------


async def server_binaries(data_dir: Path, user: ServerUser, pginstall: Path | None = None) -> Path:
    """The ``bin`` dir to run: the wheel's own, or (when switching user) its snapshot."""
    src = (pginstall or find_pginstall()).resolve()
    if not user.prefix:
        return src / "bin"
    # Mirror the wheel's layout (pgserver/pginstall next to pgserver.libs): initdb and psql
    # find their bundled libpq through RPATH $ORIGIN/../../../pgserver.libs.
    sources = [src / d for d in _SNAPSHOT_DIRS]
    libs = src.parent.parent / "pgserver.libs"
    if libs.is_dir():
        sources.append(libs)
    dst = data_dir / "pgbin"
    bindir = dst / "pgserver" / "pginstall" / "bin"
    st = (src / "bin" / "postgres").stat()
    marker = f"{src}\n{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n"
    with contextlib.suppress(OSError):
        if (dst / ".source").read_text() == marker:
            return bindir
    tmp = data_dir / "pgbin.tmp"
    linked = _world_readable(sources) and await _snapshot(sources, tmp, link=True)
    if not linked:
        # Another filesystem, or files the server's user may not read: a real copy, whose
        # modes (inside DCE_DATA_DIR) we may widen. Never chmod a hardlink: that would
        # change the venv's own file.
        await _snapshot(sources, tmp, link=False)
        await run(["chmod", "-R", "go+rX", str(tmp)])
    (tmp / ".source").write_text(marker)
    await rmtree(dst)
    os.rename(tmp, dst)
    logger.info("PostgreSQL binaries %s into %s", "linked" if linked else "copied", dst)
    return bindir


async def _snapshot(sources: list[Path], tmp: Path, *, link: bool) -> bool:
    await rmtree(tmp)
    inst = tmp / "pgserver" / "pginstall"
    inst.mkdir(mode=0o755, parents=True)
    for s in sources:
        into = tmp if s.name == "pgserver.libs" else inst
        rc, out = await run(["cp", "-R", "-l" if link else "-p", str(s), str(into)], check=not link)
        if rc != 0:
            logger.info("cannot hardlink %s (%s); copying instead", s, out.strip())
            return False
    return True


def _world_readable(roots: list[Path]) -> bool:
    """True when every file and dir under roots is readable (dirs searchable) by others."""
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            if os.stat(dirpath).st_mode & 0o005 != 0o005:
                return False
            for name in files:
                if os.stat(os.path.join(dirpath, name)).st_mode & 0o004 == 0:
                    return False
    return True


# -- running programs --------------------------------------------------------------------------


async def run(
    argv: list[str],
    *,
    user: ServerUser | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> tuple[int, str]:
    """Run a program to completion, as ``user`` if given; returns (exit code, stdout+stderr)."""
    if user is not None:
        argv = [*user.prefix, *argv]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LANG": "C",
        "TZ": "UTC",
    }
    rc, text = await run_program(argv, env=env, timeout=timeout)
    if check and rc != 0:
        raise EmbeddedPostgresError(f"{' '.join(argv)} failed (exit {rc}): {text.strip()}")
    return rc, text


async def run_program(
    argv: list[str], *, env: dict[str, str] | None, timeout: float
) -> tuple[int, str]:
    """Run a program to completion without blocking the loop; returns (exit code, output).

    subprocess.Popen plus polling rather than asyncio's subprocess API: uvloop (which
    ``dce run`` uses) does not close inherited descriptors, so the postmaster that pg_ctl
    forks kept the output pipe open (pg_ctl "never finished") along with the switch's own
    sockets. Popen closes every descriptor but stdio. The run starts a new session: the
    postmaster must not get the terminal's SIGINT (Ctrl-C) while the switch still drains
    CDRs into it.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        delay = 0.002
        while (rc := proc.poll()) is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise EmbeddedPostgresError(f"{argv[0]} took more than {timeout:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        out.seek(0)
        return rc, out.read().decode(errors="replace")


async def rmtree(path: Path) -> None:
    """Remove a tree (if present) in a subprocess, so a big one never stalls the loop."""
    if path.exists():
        rc, out = await run_program(["rm", "-rf", "--", str(path)], env=None, timeout=120.0)
        if rc != 0:
            raise EmbeddedPostgresError(f"could not remove {path}: {out.strip()}")
