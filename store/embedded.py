"""Embedded PostgreSQL: the default database when DCE_DATABASE_URL is unset.

What operators see of it is in docs/settings.md ("DCE_DATABASE_URL", "The data directory").

Runs the PostgreSQL 16 binaries shipped inside the ``pgserver`` wheel (``pgserver/pginstall``)
but not pgserver's Python wrapper, which chmods every ancestor directory to 755, creates a login
user, trusts stale pids and leaves the server running after SIGTERM (research/storage.md §1).
This module owns the cluster: its directories, initdb, start, stop and recovery.
:mod:`store.pgbinaries` says which copy of the programs runs, as which user (``dce-postgres``
when DCE runs as root, since PostgreSQL refuses root), and runs them.

Theory of operation
-------------------
Layout under ``data_dir`` (DCE_DATA_DIR)::

    data_dir/pg/            the cluster (PGDATA), initdb'd on first use, mode 0700
    data_dir/pg/dce.conf    rewritten at every start: socket dir, no TCP, UTC
    data_dir/pg/postmaster.log
    data_dir/run/           the Unix socket dir, mode 0700 (or /tmp/dce-pg-<hash>, see below)
    data_dir/pgbin/         as root only: a hardlinked (else copied) snapshot of the wheel's
                            pgserver/pginstall/{bin,lib,share} and pgserver.libs
                            (store.pgbinaries)
    data_dir/.pgembed.lock  flock held while this process owns the server

Root. The server's user (store.pgbinaries) must own PGDATA and the socket dir: as root, both
are created for it or chowned to it (a cluster made by an earlier non-root run included), and
nothing else is. Without root the current user owns everything.

Socket. Linux limits a socket path to 107 bytes, so the socket sits in ``data_dir/run`` when
``.../run/.s.PGSQL.5432`` fits in 100 bytes, else in ``/tmp/dce-pg-<sha256(data_dir)[:16]>``
(0700, must be owned by the server's user, never a symlink). The socket is 0700 and there is no
TCP listener, so ``trust`` auth admits only that user and root.

Start and recovery. ``start()`` takes an flock on ``data_dir/.pgembed.lock`` (a live process
holding it owns the server: refuse), then reads ``postmaster.pid``:

* no file: start with ``pg_ctl start -w`` in a new session (Ctrl-C on the terminal must not
  reach the postmaster while the switch drains its CDRs).
* its PID is a live ``postgres`` whose command line names this PGDATA: a server left behind
  by a ``kill -9`` of the switch (the flock is free, so its owner is dead). Reattach to it,
  restart it if it does not answer; our ``stop()`` stops it.
* otherwise (PID dead, reused by another program, or a zombie): stale. PostgreSQL's own check
  would refuse a reused PID, so remove the pid file and socket lock, but only once no process
  still runs inside PGDATA (orphaned backends still attached to the old shared memory: starting
  a second postmaster beside them would corrupt the cluster).

``stop()`` runs ``pg_ctl stop -m fast -w``, then ``-m immediate`` if that fails. Both are
idempotent. Child programs run in subprocesses polled from the loop
(``store.pgbinaries.run``), so the loop is never blocked for long; file checks are small
synchronous calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from store.dirlock import try_lock
from store.errors import EmbeddedPostgresError
from store.pgbinaries import (
    RUN_AS_USER,
    ServerUser,
    check_traversable,
    rmtree,
    run,
    run_program,
    server_binaries,
    server_user,
)

logger = logging.getLogger(__name__)

PG_PORT = 5432
SOCKET_NAME = f".s.PGSQL.{PG_PORT}"
# Linux sun_path holds 107 bytes plus NUL, macOS 103: stay well under both.
MAX_SOCKET_PATH = 100
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _PidFile:
    """The parts of ``postmaster.pid`` we use (PostgreSQL's pidfile.h, LOCK_FILE_LINE_*)."""

    pid: int
    data_dir: str
    socket_dir: str
    status: str  # "starting", "stopping", "ready", "standby" or "" (not written yet)


def socket_dir_for(data_dir: Path) -> Path:
    """The Unix socket dir for a (resolved) data dir: inside it when the path is short enough."""
    inside = data_dir / "run"
    if len(os.fsencode(inside / SOCKET_NAME)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path("/tmp") / f"dce-pg-{digest}"


def dsn_for(socket_dir: Path) -> str:
    """The asyncpg DSN of the embedded server: user and database ``postgres`` over the socket."""
    host = urllib.parse.quote(str(socket_dir), safe="/")
    return f"postgresql://postgres@/postgres?host={host}&port={PG_PORT}"


class EmbeddedPostgres:
    """Owns one embedded PostgreSQL cluster under ``data_dir`` (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        pginstall: Path | None = None,
        run_as: str = RUN_AS_USER,
        start_timeout: float = 120.0,
    ) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self._pginstall = pginstall
        self._run_as = run_as
        self._start_timeout = start_timeout
        self._lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._user: ServerUser | None = None
        self._bindir: Path | None = None
        self._dsn: str | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    @property
    def socket_dir(self) -> Path:
        return socket_dir_for(self.data_dir)

    @property
    def dsn(self) -> str | None:
        """The DSN while started, else None."""
        return self._dsn

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Start (or reattach to) the server; returns an asyncpg DSN over the Unix socket."""
        async with self._lock:
            if self._dsn is not None:
                return self._dsn
            t0 = time.monotonic()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Resolve symlinks once the dir exists: the postmaster's command line and the
            # stale-pid check compare against this exact path.
            self.data_dir = self.data_dir.resolve()
            self._take_dir_lock()
            try:
                dsn = await self._start_locked()
            except BaseException:
                self._release_dir_lock()
                raise
            self._dsn = dsn
            logger.info(
                "embedded PostgreSQL ready",
                extra={"pgdata": str(self.pgdata), "elapsed_us": _us_since(t0)},
            )
            return dsn

    async def stop(self) -> None:
        """Stop the server this object started or reattached to; a no-op otherwise."""
        async with self._lock:
            if self._dsn is None:
                return
            try:
                await self._stop_server()
            finally:
                self._dsn = None
                self._release_dir_lock()

    async def _start_locked(self) -> str:
        user = await server_user(self._run_as)
        self._user = user
        if user.prefix:
            check_traversable(self.data_dir, user)
        self._bindir = await server_binaries(self.data_dir, user, self._pginstall)
        socket_dir = self._prepare_socket_dir(user)
        await self._initdb_if_needed(user)
        if user.prefix and self.pgdata.stat().st_uid != user.uid:
            # A cluster made by an earlier non-root run: PostgreSQL insists on owning PGDATA.
            logger.warning("chowning %s to %s", self.pgdata, user.name)
            await run(["chown", "-R", f"{user.uid}:{user.gid}", str(self.pgdata)])
        self._write_conf(user, socket_dir)

        live = await self._live_postmaster()
        if live is not None:
            logger.warning(
                "reattaching to PostgreSQL pid %d left running by an earlier process", live.pid
            )
            dsn = dsn_for(Path(live.socket_dir))
            if await _answers(dsn):
                return dsn
            logger.warning("PostgreSQL pid %d does not answer: restarting it", live.pid)
            await self._stop_server()
        await self._clear_stale(socket_dir)
        await self._pg_ctl_start()
        return dsn_for(socket_dir)

    # -- directories and config --------------------------------------------------------------

    def _prepare_socket_dir(self, user: ServerUser) -> Path:
        d = socket_dir_for(self.data_dir)
        try:
            d.mkdir(mode=0o700)
            if user.prefix:
                os.chown(d, user.uid, user.gid)
        except FileExistsError:
            pass
        st = d.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"socket dir {d} is not a directory")
        if st.st_uid != user.uid:
            if d.parent == self.data_dir and user.prefix:
                os.chown(d, user.uid, user.gid)
            else:
                # A /tmp dir someone else made: never use it, it could be a trap.
                raise EmbeddedPostgresError(
                    f"socket dir {d} is owned by uid {st.st_uid}, not {user.name}; remove it "
                    "or use a shorter DCE_DATA_DIR"
                )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
        return d

    async def _initdb_if_needed(self, user: ServerUser) -> None:
        pgdata = self.pgdata
        if (pgdata / "PG_VERSION").is_file():
            return
        if pgdata.exists():
            if any(pgdata.iterdir()):
                raise EmbeddedPostgresError(
                    f"{pgdata} exists but is not a PostgreSQL cluster (no PG_VERSION); move it "
                    "away, DCE will not overwrite it"
                )
            pgdata.rmdir()
        # initdb into a side dir and rename: a crash mid-initdb never leaves a half cluster.
        tmp = self.data_dir / "pg.initdb"
        await rmtree(tmp)
        tmp.mkdir(mode=0o700)
        if user.prefix:
            os.chown(tmp, user.uid, user.gid)
        t0 = time.monotonic()
        assert self._bindir is not None
        rc, out = await run(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(tmp),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            user=user,
            check=False,
            timeout=300.0,
        )
        if rc != 0:
            raise EmbeddedPostgresError(f"initdb failed (exit {rc}): {out.strip()[-2000:]}")
        with (tmp / "postgresql.conf").open("a") as fh:
            fh.write(
                "\n# Added by DCE: per-start settings (socket dir, no TCP).\n"
                "include_if_exists = 'dce.conf'\n"
            )
        os.rename(tmp, pgdata)
        _fsync_dir(self.data_dir)
        logger.info("initdb done", extra={"pgdata": str(pgdata), "elapsed_us": _us_since(t0)})

    def _write_conf(self, user: ServerUser, socket_dir: Path) -> None:
        text = (
            "# Written by DCE at every start; edits are overwritten.\n"
            "listen_addresses = ''\n"
            f"unix_socket_directories = {_conf_quote(str(socket_dir))}\n"
            "unix_socket_permissions = 0700\n"
            f"port = {PG_PORT}\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
        )
        path = self.pgdata / "dce.conf"
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        tmp = self.pgdata / "dce.conf.tmp"
        tmp.write_text(text)
        if user.prefix:
            os.chown(tmp, user.uid, user.gid)
        os.rename(tmp, path)

    # -- the running server ------------------------------------------------------------------

    def _read_pid_file(self) -> _PidFile | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read postmaster.pid: {exc}") from exc
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return _PidFile(0, "", "", "")  # torn write: treated as stale
        fields = [line.strip() for line in lines] + [""] * 8
        return _PidFile(pid, fields[1], fields[4], fields[7])

    async def _live_postmaster(self) -> _PidFile | None:
        """The pid file if it names a live postmaster of this PGDATA (waits out transitions)."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            info = self._read_pid_file()
            if info is None or not await self._is_our_postmaster(info.pid):
                return None
            if info.status == "ready":
                return info
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL pid {info.pid} stayed {info.status or 'starting'!r} for "
                    f"{self._start_timeout:.0f}s; see {self.pgdata / 'postmaster.log'}"
                )
            # "starting" (crash recovery) or "stopping": wait for it to settle either way.
            await asyncio.sleep(0.05)

    async def _is_our_postmaster(self, pid: int) -> bool:
        if pid <= 0 or not _pid_alive(pid):
            return False
        argv = await _cmdline(pid)
        if not argv or os.path.basename(argv[0]) != "postgres":
            return False
        for i, arg in enumerate(argv):
            value = None
            if arg == "-D" and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith("--pgdata="):
                value = arg.partition("=")[2]
            if value is not None and os.path.realpath(value) == str(self.pgdata):
                return True
        return False

    async def _clear_stale(self, socket_dir: Path) -> None:
        info = self._read_pid_file()
        if info is not None:
            orphans = await self._wait_for_orphans()
            if orphans:
                raise EmbeddedPostgresError(
                    f"processes {orphans} still run inside {self.pgdata} although its "
                    "postmaster is gone; starting another would corrupt the cluster. Stop "
                    "them (kill -QUIT) and run again"
                )
            logger.warning(
                "removing stale postmaster.pid (pid %d is not a running postgres for %s)",
                info.pid,
                self.pgdata,
            )
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        # The socket dir is private to this data dir, so a leftover socket or lock is ours.
        for name in (SOCKET_NAME, SOCKET_NAME + ".lock"):
            (socket_dir / name).unlink(missing_ok=True)

    async def _wait_for_orphans(self, timeout: float = 5.0) -> list[int]:
        """PIDs whose cwd is PGDATA; backends of a killed postmaster exit within a second."""
        deadline = time.monotonic() + timeout
        while True:
            pids = _pids_with_cwd(self.pgdata)
            if not pids or time.monotonic() > deadline:
                return pids
            await asyncio.sleep(0.1)

    async def _pg_ctl_start(self) -> None:
        assert self._bindir is not None
        log = self.pgdata / "postmaster.log"
        with contextlib.suppress(OSError):
            if log.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(log, log.with_name("postmaster.log.1"))
        t0 = time.monotonic()
        rc, out = await run(
            [
                str(self._bindir / "pg_ctl"),
                "start",
                "-w",
                "-s",
                "-D",
                str(self.pgdata),
                "-l",
                str(log),
                "-t",
                str(int(self._start_timeout)),
            ],
            user=self._user,
            check=False,
            timeout=self._start_timeout + 10,
        )
        if rc != 0:
            raise EmbeddedPostgresError(
                f"pg_ctl start failed (exit {rc}): {out.strip()}\n{_tail(log)}"
            )
        logger.info("PostgreSQL started", extra={"elapsed_us": _us_since(t0)})

    async def _stop_server(self) -> None:
        assert self._bindir is not None
        pg_ctl = str(self._bindir / "pg_ctl")
        for mode in ("fast", "immediate"):
            info = self._read_pid_file()
            if info is None or not await self._is_our_postmaster(info.pid):
                return
            rc, out = await run(
                [pg_ctl, "stop", "-w", "-s", "-D", str(self.pgdata), "-m", mode, "-t", "60"],
                user=self._user,
                check=False,
                timeout=70.0,
            )
            if rc == 0:
                logger.info("PostgreSQL stopped (%s)", mode)
                return
            logger.warning("pg_ctl stop -m %s failed (exit %d): %s", mode, rc, out.strip())
        raise EmbeddedPostgresError(f"could not stop PostgreSQL in {self.pgdata}")

    # -- the data dir lock ---------------------------------------------------------------------

    def _take_dir_lock(self) -> None:
        path = self.data_dir / ".pgembed.lock"
        fd = try_lock(path)
        if fd is None:
            raise EmbeddedPostgresError(
                f"{self.data_dir} is in use by another running DCE process (lock {path})"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_dir_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


# -- module helpers ----------------------------------------------------------------------------


def _us_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1_000_000)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie passes kill(0) but is dead: its state is the field after "(comm)".
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


async def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
        return [os.fsdecode(a) for a in raw.split(b"\0") if a]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return []
    except OSError:
        return []
    # No /proc (macOS): ask ps. Paths with spaces split wrongly, which only makes us treat a
    # live server as stale; PostgreSQL's own lock check then refuses to start a second one.
    _, out = await run_program(["ps", "-o", "command=", "-p", str(pid)], env=None, timeout=10.0)
    return out.split()


def _pids_with_cwd(directory: Path) -> list[int]:
    if not os.path.isdir("/proc/self"):
        return []
    target = str(directory)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


async def _answers(dsn: str) -> bool:
    try:
        async with asyncio.timeout(5.0):
            conn = await asyncpg.connect(dsn)
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
