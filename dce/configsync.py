"""The config file and the database: seed once at start, then ``dce config apply`` and export.

The database is the one source of truth for trunks, campaigns and buyers. At start
(``seed_or_compare``) the file seeds a database that was never seeded; on any later start it is
only compared, and when applying it would change something ``dce run`` prints and logs one line
that points at ``dce config apply``. An API change therefore survives restarts.

``dce config apply FILE [--dry-run] [--prune]`` prints the diff (store/config_diff.py) and
applies it. With a switch running (its ``/healthz`` answers at DCE_HTTP_LISTEN) it goes through
that switch's admin API, ``PUT /api/v1/config``, so the switch reloads as after any API change
(an embedded PostgreSQL belongs to its switch's process and cannot be opened twice). Otherwise
it opens the database itself: DCE_DATABASE_URL, or the embedded server in DCE_DATA_DIR, started
and stopped as ``dce run`` does. ``dce config export`` prints what is stored as TOML, the same
two ways. The admin token is DCE_ADMIN_TOKEN, else DCE_DATA_DIR/admin_token.

Secrets are never printed: a diff shows ``***`` for a changed password, ``ws_token`` or API
key; an export leaves out API keys (only hashes are stored) and trunk digest credentials, and
applying it back keeps the stored ones (api/config.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

import aiohttp
import msgspec

from api.config import apply_config, export
from api.errors import ApiError
from config.errors import ConfigError
from config.settings import Settings, load_settings, read_config_file
from exchange.auction_index import compile_index
from exchange.errors import ConfigInvalid
from exchange.models import ExchangeConfig, config_from_file
from store.config_diff import ConfigDiff, FieldChange, ObjectChange
from store.database import Store
from store.errors import EmbeddedPostgresError

__all__ = [
    "CommandFailed",
    "SwitchClient",
    "apply_command",
    "differs_line",
    "export_command",
    "load_settings_file",
    "render_diff",
    "run_command",
    "seed_or_compare",
    "stored_config",
    "to_toml",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_API = "/api/v1/config"
_PROBE = aiohttp.ClientTimeout(total=5)


# ----------------------------------------------------------------------------------------------
# At start (dce run)


async def seed_or_compare(
    store: Store, file: ExchangeConfig, path: Path | None, out: TextIO | None = None
) -> ExchangeConfig:
    """Seed a never-seeded database from the file, else say whether the file differs.

    Returns what is stored: the configuration the switch runs with.

    Raises:
        ConfigInvalid: seeding would store a configuration that does not compile.
        StoreError: seeding conflicts with stored data (an API key in use).
    """
    source = str(path) if path is not None else "(no config file)"
    if not await store.exchange.seed_config(file, source=source, check=compile_index):
        try:
            diff = await store.exchange.sync_config(file, dry_run=True)
            line = differs_line(path, diff) if diff.pending else None
        except ConfigInvalid as exc:
            line = (
                f"config: {source} cannot be compared with the database ({exc}); the "
                "database is used as it is"
            )
        if line is not None:
            print(line, file=out or sys.stdout, flush=True)
            logger.warning(line)
    return await store.exchange.read_config()


def differs_line(path: Path | None, diff: ConfigDiff) -> str:
    """The one line ``dce run`` prints when the file would change the database."""
    name = str(path) if path is not None else "FILE"
    return (
        f"config: {name} differs from the database ({_counts(diff, future=True)}); the "
        f"database is in use. See the diff: dce config apply {name} --dry-run"
    )


def _counts(diff: ConfigDiff, *, future: bool) -> str:
    verbs = ("to add", "to change", "to remove") if future else ("added", "changed", "removed")
    n = (diff.added, diff.changed, diff.removed)
    parts = [f"{k} {v}" for k, v in zip(n, verbs, strict=True) if k or not future]
    return ", ".join(parts) or "nothing"


# ----------------------------------------------------------------------------------------------
# Showing a diff


def _value(change: FieldChange) -> str:
    if not change.secret:
        return f"{change.field}: {change.old or 'unset'} -> {change.new or 'unset'}"
    if change.old is None:
        what = "set"
    elif change.new is None:
        what = "removed"
    else:
        what = "changed"
    return f"{change.field}: {what} (secret, not shown)"


_MARK = {"add": "+", "change": "~", "remove": "-", "keep": "="}


def render_diff(diff: ConfigDiff) -> list[str]:
    """The diff for people: one line per object, then one per changed field, indented."""
    lines = []
    for c in diff.changes:
        lines.append(f"{_MARK[c.action]} {c.path}{_note(c)}")
        lines += [f"      {_value(f)}" for f in c.fields]
    return lines


def _note(c: ObjectChange) -> str:
    return {
        "add": "  (new)",
        "change": "",
        "remove": "  (removed: not in the file)",
        "keep": "  (only in the database: kept; --prune removes it)",
    }[c.action]


# ----------------------------------------------------------------------------------------------
# TOML


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


def _string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")  # our bug: builtins only


def _table(lines: list[str], path: list[str], table: dict[str, Any], array: bool) -> None:
    name = ".".join(_key(p) for p in path)
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    subtables: list[tuple[str, Any]] = []
    for k, v in table.items():
        if v is None:
            continue
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            subtables.append((k, v))  # after the plain keys: TOML needs them first
        else:
            lines.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in subtables:
        for item in v if isinstance(v, list) else [v]:
            lines.append("")
            _table(lines, [*path, k], item, isinstance(v, list))


def to_toml(cfg: ExchangeConfig) -> str:
    """``cfg`` as the ``[[trunks]]``, ``[[campaigns]]`` and ``[[buyers]]`` of a config file,
    without secrets (``api.config.export``); defaults are left out."""
    data = msgspec.to_builtins(export(cfg))
    lines = [
        "# Exported by `dce config export`. Secrets are not exported: trunks' digest",
        "# credentials (username, password) and buyers' API keys. Applied back with",
        "# `dce config apply`, a trunk or buyer without them keeps the stored ones.",
    ]
    for section in ("trunks", "campaigns", "buyers"):
        for item in data.get(section, []):
            lines.append("")
            _table(lines, [section], item, array=True)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Reaching the database: through a running switch, or directly


class CommandFailed(Exception):
    """A command failed: ``run_command`` prints ``message`` and exits with ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class SwitchClient:
    """The admin API of the switch these settings describe (also ``dce status``, ``calls``
    and ``hangup``: dce/control.py)."""

    def __init__(self, settings: Settings) -> None:
        host, port = settings.http_listen
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in host:
            host = f"[{host}]"
        self.ssl: ssl.SSLContext | bool = True
        if settings.tls_cert is not None:
            # Our own switch: trust exactly its certificate, whatever name it was issued for.
            context = ssl.create_default_context(cafile=str(settings.tls_cert))
            context.check_hostname = False
            self.ssl = context
        scheme = "https" if settings.tls_cert is not None else "http"
        self.url = f"{scheme}://{host}:{port}"
        self.settings = settings

    async def running(self, http: aiohttp.ClientSession) -> bool:
        """True if something answers /healthz (whatever its status); False if refused."""
        try:
            async with http.get(self.url + "/healthz", ssl=self.ssl, timeout=_PROBE):
                return True
        except aiohttp.ClientSSLError as exc:  # a ClientConnectorError, but something answered
            raise CommandFailed(f"TLS with the switch at {self.url} failed: {exc}") from exc
        except aiohttp.ClientConnectorError:
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CommandFailed(
                f"the switch at {self.url} does not answer properly: {exc}"
            ) from exc

    def token(self) -> str:
        if self.settings.admin_token:
            return self.settings.admin_token
        path = self.settings.data_dir / "admin_token"
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise CommandFailed(
                f"a switch runs at {self.url} but there is no admin token: set "
                f"DCE_ADMIN_TOKEN or make {path} readable ({exc.strerror})"
            ) from exc

    async def health(self, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]] | None:
        """(status, body) of ``/healthz``; None when nothing listens there."""
        if not await self.running(http):
            return None
        try:
            async with http.get(self.url + "/healthz", ssl=self.ssl, timeout=_PROBE) as r:
                return r.status, json.loads(await r.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CommandFailed(
                f"the switch at {self.url} does not answer properly: {exc}"
            ) from exc

    async def call(
        self,
        http: aiohttp.ClientSession,
        method: str,
        query: str = "",
        body: bytes | None = None,
        path: str = _API,
    ) -> bytes:
        """``method`` on ``path`` of the admin API; the body of a 2xx, else CommandFailed
        with the API's error (exit status 2 for a 422)."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.url}{path}{query}"
        try:
            async with http.request(method, url, data=body, headers=headers, ssl=self.ssl) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CommandFailed(f"{method} {url}: {exc}") from exc
        if 200 <= status < 300:
            return raw
        try:
            err = json.loads(raw)
        except ValueError:
            err = {"error": raw[:200].decode(errors="replace"), "detail": None}
        if status == 401:
            raise CommandFailed(f"the switch at {self.url} refused the admin token")
        if status == 404 and err.get("detail") is None:
            raise CommandFailed(
                f"the server at {self.url} has no {path}: is it a dce switch this old?"
            )
        raise CommandFailed(_error_text(err), 2 if status == 422 else 1)


def _error_text(err: dict[str, Any]) -> str:
    detail = err.get("detail")
    if isinstance(detail, dict) and "field" in detail:
        return f"{err.get('error')}: {detail['field']}: {detail.get('message')}"
    return f"{err.get('error')}: {detail}" if detail else str(err.get("error"))


async def _with_store(
    settings: Settings, work: Callable[[Store], Awaitable[_T]], *, create: bool
) -> _T:
    """Open the database as ``dce run`` does (migrations included), run ``work``, close."""
    embedded: Any = None
    dsn = settings.database_url
    if dsn is None:
        from store.embedded import EmbeddedPostgres

        if not create and not (settings.data_dir / "pg").is_dir():
            raise CommandFailed(
                f"no database in {settings.data_dir / 'pg'}: dce run has not run there"
            )
        embedded = EmbeddedPostgres(settings.data_dir)
        try:
            dsn = await embedded.start()
        except EmbeddedPostgresError as exc:
            raise CommandFailed(
                f"{exc}. Its admin API did not answer at DCE_HTTP_LISTEN; give the settings "
                "that switch runs with"
            ) from exc
    store = Store()
    try:
        await store.connect(dsn)
        await store.migrate()
        return await work(store)
    finally:
        await store.close()
        if embedded is not None:
            await embedded.stop()


# ----------------------------------------------------------------------------------------------
# The commands


def load_settings_file(path: Path | None) -> Settings:
    """The settings as ``dce run`` resolves them (FILE, then DCE_* variables)."""
    return _load(path, objects=False)[0]


def _load(path: Path | None, *, objects: bool) -> tuple[Settings, ExchangeConfig]:
    try:
        values = read_config_file(path) if path is not None else {}
        settings = load_settings(values)
        return settings, config_from_file(values) if objects else ExchangeConfig()
    except (ConfigError, msgspec.ValidationError) as exc:
        raise CommandFailed(f"config error: {exc}", 2) from exc


def run_command(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine; a CommandFailed is printed as ``dce: ...`` (its status)."""
    try:
        return asyncio.run(main())
    except CommandFailed as exc:
        print(f"dce: {exc}", file=sys.stderr)
        return exc.status


def apply_command(path: Path, *, dry_run: bool, prune: bool, out: TextIO | None = None) -> int:
    """``dce config apply``: print the diff, apply it unless ``dry_run``; the exit status."""
    stream = out or sys.stdout

    async def main() -> int:
        settings, cfg = _load(path, objects=True)
        switch = SwitchClient(settings)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if await switch.running(http):
                query = f"?dry_run={str(dry_run).lower()}&prune={str(prune).lower()}"
                raw = await switch.call(http, "PUT", query, msgspec.json.encode(cfg))
                diff = msgspec.json.decode(raw, type=ConfigDiff)
                via = f"through the running switch at {switch.url}"
            else:

                async def work(store: Store) -> ConfigDiff:
                    try:
                        return await apply_config(
                            store, cfg, prune=prune, dry_run=dry_run,
                            source=f"dce config apply {path}",
                        )  # fmt: skip
                    except ApiError as exc:
                        detail = {"error": exc.error, "detail": exc.detail}
                        status = 2 if exc.status == 422 else 1
                        raise CommandFailed(_error_text(detail), status) from exc

                diff = await _with_store(settings, work, create=True)
                via = f"to the database directly (no switch answered at {switch.url})"
        for line in render_diff(diff):
            print(line, file=stream)
        kept = f"; {diff.kept} only in the database, kept" if diff.kept else ""
        if not diff.pending:
            print(f"{path}: nothing to change{kept}", file=stream)
        elif dry_run:
            print(
                f"dry run: {_counts(diff, future=True)}{kept}; nothing was changed", file=stream
            )
        else:
            print(f"applied {via}: {_counts(diff, future=False)}{kept}", file=stream)
        return 0

    return run_command(main)


def export_command(path: Path | None, out: TextIO | None = None) -> int:
    """``dce config export``: print what is stored as a config file (TOML), without secrets."""
    stream = out or sys.stdout

    async def main() -> int:
        settings, _ = _load(path, objects=False)
        stream.write(to_toml(await stored_config(settings)))
        return 0

    return run_command(main)


async def stored_config(settings: Settings) -> ExchangeConfig:
    """The stored trunks, campaigns and buyers (secrets left out): through the running
    switch, else from the database (CommandFailed when there is none yet)."""
    switch = SwitchClient(settings)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        if await switch.running(http):
            return msgspec.json.decode(await switch.call(http, "GET"), type=ExchangeConfig)

    async def work(store: Store) -> ExchangeConfig:
        return await store.exchange.read_config()

    return await _with_store(settings, work, create=False)

