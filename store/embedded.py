"""Embedded PostgreSQL: the default database when DCE_DATABASE_URL is unset (SPEC.md "Install").

Runs the PostgreSQL 16 binaries shipped inside the ``pgserver`` wheel (``pgserver/pginstall``)
but not pgserver's Python wrapper, which chmods every ancestor directory to 755, creates a login
user, trusts stale pids and leaves the server running after SIGTERM (research/storage.md §1).

Theory of operation
-------------------
Layout under ``data_dir`` (DCE_DATA_DIR)::

    data_dir/pg/            the cluster (PGDATA), initdb'd on first use, mode 0700
    data_dir/pg/dce.conf    rewritten at every start: socket dir, no TCP, UTC
    data_dir/pg/postmaster.log
    data_dir/run/           the Unix socket dir, mode 0700 (or /tmp/dce-pg-<hash>, see below)
    data_dir/pgbin/         as root only: a hardlinked (else copied) snapshot of the wheel's
                            pgserver/pginstall/{bin,lib,share} and pgserver.libs
    data_dir/.pgembed.lock  flock held while this process owns the server

Root. PostgreSQL refuses to run as root, so when DCE runs as root the server runs as the system
user ``dce-postgres``, created once with ``useradd --system --user-group --no-create-home
--shell /usr/sbin/nologin`` (it cannot log in and owns nothing outside DCE_DATA_DIR). Commands
switch to it through ``setpriv`` (util-linux; ``runuser`` as a fallback) because uvloop's
subprocess API has no ``user=``. Only ``data_dir/pg`` and the socket dir are chowned to it, and
``data_dir`` itself gets o+x (search, not list) when it has none. Nothing outside DCE_DATA_DIR is
ever chmodded or chowned: an ancestor the user cannot traverse is an error naming the
directory. The binaries are snapshotted into ``data_dir/pgbin`` because the venv often lives
under a 0700 home (``/root``); hardlinks make that free on the same filesystem, and PostgreSQL
finds ``share/`` and ``lib/`` relative to the executable's path, so the snapshot is
self-contained. (Symlinks would not do: PostgreSQL resolves them back to the venv.) Without
root, everything runs as the current user, from the venv in place.

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
idempotent. All child programs run as asyncio subprocesses, so the loop is never blocked for
long; file checks are small synchronous calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from store.dirlock import try_lock
from store.errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

RUN_AS_USER = "dce-postgres"
PG_PORT = 5432
SOCKET_NAME = f".s.PGSQL.{PG_PORT}"
# Linux sun_path holds 107 bytes plus NUL, macOS 103: stay well under both.
MAX_SOCKET_PATH = 100
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_SNAPSHOT_DIRS = ("bin", "lib", "share")  # include/ is only for building extensions


@dataclass(frozen=True, slots=True)
class _Identity:
    """Who runs the PostgreSQL programs, and the argv prefix that switches to that user."""

    uid: int
    gid: int
    name: str
    prefix: tuple[str, ...]  # () when no switch is needed (not root)


@dataclass(frozen=True, slots=True)
class _PidFile:
    """The parts of ``postmaster.pid`` we use (PostgreSQL's pidfile.h, LOCK_FILE_LINE_*)."""

    pid: int
    data_dir: str
    socket_dir: str
    status: str  # "starting", "stopping", "ready", "standby" or "" (not written yet)


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
        self._ident: _Identity | None = None
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
        ident = await self._identity()
        self._ident = ident
        if ident.prefix:
            self._check_traversable(ident)
        self._bindir = await self._binaries(ident)
        socket_dir = self._prepare_socket_dir(ident)
        await self._initdb_if_needed(ident)
        if ident.prefix and self.pgdata.stat().st_uid != ident.uid:
            # A cluster made by an earlier non-root run: PostgreSQL insists on owning PGDATA.
            logger.warning("chowning %s to %s", self.pgdata, ident.name)
            await self._run(["chown", "-R", f"{ident.uid}:{ident.gid}", str(self.pgdata)])
        self._write_conf(ident, socket_dir)

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

    # -- who runs PostgreSQL -----------------------------------------------------------------

    async def _identity(self) -> _Identity:
        if os.geteuid() != 0:
            pw = pwd.getpwuid(os.geteuid())
            return _Identity(os.geteuid(), os.getegid(), pw.pw_name, ())
        pw = await self._ensure_user()
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
        return _Identity(pw.pw_uid, pw.pw_gid, pw.pw_name, prefix)

    async def _ensure_user(self) -> pwd.struct_passwd:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(self._run_as)
        useradd = shutil.which("useradd")
        if useradd is None:
            raise EmbeddedPostgresError(
                f"PostgreSQL cannot run as root and user {self._run_as!r} does not exist; "
                "create it (no useradd here) or run DCE as a normal user"
            )
        nologin = next(
            (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false"
        )
        logger.warning("creating system user %s to run the embedded PostgreSQL", self._run_as)
        rc, out = await self._run(
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
                self._run_as,
            ],
            check=False,
        )
        try:
            return pwd.getpwnam(self._run_as)  # also fine when another process won the race
        except KeyError:
            raise EmbeddedPostgresError(
                f"useradd {self._run_as} failed (exit {rc}): {out.strip()}"
            ) from None

    def _check_traversable(self, ident: _Identity) -> None:
        """Fail naming the first ancestor of data_dir the server's user cannot enter."""
        for d in reversed([self.data_dir, *self.data_dir.parents]):
            st = d.stat()
            if _can_search(st, ident):
                continue
            if d == self.data_dir:
                # DCE_DATA_DIR is ours: grant search (not listing) so the user reaches pg/.
                logger.info("adding o+x to %s so %s can reach pg/", d, ident.name)
                os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                continue
            raise EmbeddedPostgresError(
                f"{d} (mode {stat.S_IMODE(st.st_mode):04o}) is not traversable by user "
                f"{ident.name}, which runs the embedded PostgreSQL because PostgreSQL refuses "
                f"root; DCE never changes permissions outside DCE_DATA_DIR. Choose a "
                f"DCE_DATA_DIR outside {d}, or allow it with: chmod o+x {d}"
            )

    # -- binaries ----------------------------------------------------------------------------

    async def _binaries(self, ident: _Identity) -> Path:
        src = (self._pginstall or find_pginstall()).resolve()
        if not ident.prefix:
            return src / "bin"
        # Mirror the wheel's layout (pgserver/pginstall next to pgserver.libs): initdb and psql
        # find their bundled libpq through RPATH $ORIGIN/../../../pgserver.libs.
        sources = [src / d for d in _SNAPSHOT_DIRS]
        libs = src.parent.parent / "pgserver.libs"
        if libs.is_dir():
            sources.append(libs)
        dst = self.data_dir / "pgbin"
        bindir = dst / "pgserver" / "pginstall" / "bin"
        st = (src / "bin" / "postgres").stat()
        marker = f"{src}\n{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n"
        with contextlib.suppress(OSError):
            if (dst / ".source").read_text() == marker:
                return bindir
        tmp = self.data_dir / "pgbin.tmp"
        linked = _world_readable(sources) and await self._snapshot(sources, tmp, link=True)
        if not linked:
            # Another filesystem, or files the server's user may not read: a real copy, whose
            # modes (inside DCE_DATA_DIR) we may widen. Never chmod a hardlink: that would
            # change the venv's own file.
            await self._snapshot(sources, tmp, link=False)
            await self._run(["chmod", "-R", "go+rX", str(tmp)])
        (tmp / ".source").write_text(marker)
        await _rmtree(dst)
        os.rename(tmp, dst)
        logger.info("PostgreSQL binaries %s into %s", "linked" if linked else "copied", dst)
        return bindir

    async def _snapshot(self, sources: list[Path], tmp: Path, *, link: bool) -> bool:
        await _rmtree(tmp)
        inst = tmp / "pgserver" / "pginstall"
        inst.mkdir(mode=0o755, parents=True)
        for s in sources:
            into = tmp if s.name == "pgserver.libs" else inst
            rc, out = await self._run(
                ["cp", "-R", "-l" if link else "-p", str(s), str(into)], check=not link
            )
            if rc != 0:
                logger.info("cannot hardlink %s (%s); copying instead", s, out.strip())
                return False
        return True

    # -- directories and config --------------------------------------------------------------

    def _prepare_socket_dir(self, ident: _Identity) -> Path:
        d = socket_dir_for(self.data_dir)
        try:
            d.mkdir(mode=0o700)
            if ident.prefix:
                os.chown(d, ident.uid, ident.gid)
        except FileExistsError:
            pass
        st = d.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"socket dir {d} is not a directory")
        if st.st_uid != ident.uid:
            if d.parent == self.data_dir and ident.prefix:
                os.chown(d, ident.uid, ident.gid)
            else:
                # A /tmp dir someone else made: never use it, it could be a trap.
                raise EmbeddedPostgresError(
                    f"socket dir {d} is owned by uid {st.st_uid}, not {ident.name}; remove it "
                    "or use a shorter DCE_DATA_DIR"
                )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
        return d

    async def _initdb_if_needed(self, ident: _Identity) -> None:
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
        await _rmtree(tmp)
        tmp.mkdir(mode=0o700)
        if ident.prefix:
            os.chown(tmp, ident.uid, ident.gid)
        t0 = time.monotonic()
        assert self._bindir is not None
        rc, out = await self._run(
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
            as_server=True,
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

    def _write_conf(self, ident: _Identity, socket_dir: Path) -> None:
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
        if ident.prefix:
            os.chown(tmp, ident.uid, ident.gid)
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
        rc, out = await self._run(
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
            as_server=True,
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
            rc, out = await self._run(
                [pg_ctl, "stop", "-w", "-s", "-D", str(self.pgdata), "-m", mode, "-t", "60"],
                as_server=True,
                check=False,
                timeout=70.0,
            )
            if rc == 0:
                logger.info("PostgreSQL stopped (%s)", mode)
                return
            logger.warning("pg_ctl stop -m %s failed (exit %d): %s", mode, rc, out.strip())
        raise EmbeddedPostgresError(f"could not stop PostgreSQL in {self.pgdata}")

    # -- helpers -----------------------------------------------------------------------------

    async def _run(
        self,
        argv: list[str],
        *,
        as_server: bool = False,
        check: bool = True,
        timeout: float = 120.0,
    ) -> tuple[int, str]:
        """Run a program to completion; returns (exit code, stdout+stderr)."""
        if as_server and self._ident is not None:
            argv = [*self._ident.prefix, *argv]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
        }
        rc, text = await _run_program(argv, env=env, timeout=timeout)
        if check and rc != 0:
            raise EmbeddedPostgresError(f"{' '.join(argv)} failed (exit {rc}): {text.strip()}")
        return rc, text

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


def _can_search(st: os.stat_result, ident: _Identity) -> bool:
    # Mode bits as the kernel applies them (owner, then group, then other). A directory that an
    # ACL opens anyway is reported as closed: rare, and the error says how to fix it.
    if st.st_uid == ident.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == ident.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


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
    _, out = await _run_program(["ps", "-o", "command=", "-p", str(pid)], env=None, timeout=10.0)
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


async def _rmtree(path: Path) -> None:
    if path.exists():
        # A subprocess, so a big tree never stalls the loop.
        rc, out = await _run_program(["rm", "-rf", "--", str(path)], env=None, timeout=120.0)
        if rc != 0:
            raise EmbeddedPostgresError(f"could not remove {path}: {out.strip()}")


async def _run_program(
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
