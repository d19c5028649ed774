"""``dce dnc import``: a file of numbers into a DNC list stored in the database.

DNC lists live in PostgreSQL, shared by every switch instance on it (store/dnc.py); a running
switch loads a stored change within a second of its commit (dce/sync.py). How the import gets
there:

* DCE_DATABASE_URL set: this process parses and sorts the file and writes the list itself,
  whether switches run or not (the heavy work stays off the switches, which only load the
  result);
* the embedded database, with its switch running (its ``/healthz`` answers at DCE_HTTP_LISTEN):
  the file is streamed to that switch's ``POST /api/v1/dnc``, since the embedded server belongs
  to its switch's process;
* the embedded database, no switch running: this process starts it, as ``dce config apply``
  does (dce/configsync.py).

A merge builds on the stored list under the list's lock in the database, so it never loses a
change another instance made meanwhile. A file without a single number does not replace a list
(exit status 2), as through the API.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Final

import aiohttp
import msgspec

from compliance.dnc import DEFAULT_MAX_AGE_DAYS, DncImporter, DncStore, ImportReport, Progress
from config.settings import Settings
from dce.configsync import CommandFailed, SwitchClient, _with_store
from store.database import Store

__all__ = ["import_into", "import_list"]

_READ_SIZE: Final = 1 << 22
_API: Final = "/api/v1/dnc"


def _parse(path: Path, progress: Progress | None) -> DncImporter:
    try:
        total = path.stat().st_size
        importer = DncImporter(progress, total)
        with path.open("rb") as f:
            while chunk := f.read(_READ_SIZE):
                importer.feed(chunk)
    except FileNotFoundError as exc:
        raise CommandFailed(f"{path}: no such file", 2) from exc
    except OSError as exc:
        raise CommandFailed(f"{path}: {exc.strerror}", 2) from exc
    importer.finish()
    return importer


async def import_into(
    store: Store,
    path: Path,
    *,
    name: str,
    source: str | None,
    loaded_at: datetime,
    merge: bool,
    max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
    progress: Progress | None = None,
) -> ImportReport:
    """Parse ``path`` and store it as list ``name`` (merged into the stored one if ``merge``).

    Raises:
        CommandFailed: no such file, or not a single number in it for a replacement.
        ComplianceError: the list name is not valid.
    """
    importer = _parse(path, progress)  # before the transaction: parsing takes seconds
    if importer.imported == 0 and not merge:
        raise CommandFailed(
            f"{path}: no number in {importer.read} lines ({importer.rejected} rejected); "
            f"list {name!r} is unchanged",
            2,
        )
    async with store.dnc.writing(name) as w:
        scratch = DncStore()
        if merge and w.version is not None:
            stored = await w.load()
            if stored is not None:
                scratch.put(stored)
        report = scratch.finish_import(
            name,
            importer,
            source=source if source is not None else path.name,
            loaded_at=loaded_at,
            merge=merge,
            max_age_days=max_age_days,
        )
        await w.save(scratch[name])
    return report


async def _through_switch(
    switch: SwitchClient,
    http: aiohttp.ClientSession,
    path: Path,
    *,
    name: str,
    source: str | None,
    loaded_at: datetime,
    merge: bool,
    progress: Progress | None,
) -> ImportReport:
    try:
        total = path.stat().st_size
    except FileNotFoundError as exc:
        raise CommandFailed(f"{path}: no such file", 2) from exc

    async def body() -> AsyncIterator[bytes]:
        done = lines = 0
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                done += len(chunk)
                lines += chunk.count(b"\n")
                if progress is not None:
                    progress(done, total, lines)
                yield chunk

    params = {
        "list": name,
        "source": source if source is not None else path.name,
        "merge": "true" if merge else "false",
        "loaded_at": loaded_at.isoformat(),
    }
    headers = {"Authorization": f"Bearer {switch.token()}", "Content-Type": "text/plain"}
    url = switch.url + _API
    try:
        async with http.post(url, params=params, data=body(), headers=headers, ssl=switch.ssl) as r:
            raw = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CommandFailed(f"POST {url}: {exc}") from exc
    if status == 200:
        return msgspec.json.decode(raw, type=ImportReport)
    try:
        err = json.loads(raw)
    except ValueError:
        err = {"error": raw[:200].decode(errors="replace")}
    detail = err.get("detail")
    if isinstance(detail, dict) and "message" in detail:
        detail = f"{detail.get('field')}: {detail['message']}"
    text = f"{err.get('error')}: {detail}" if detail else str(err.get("error"))
    raise CommandFailed(text, 2 if status in (413, 415, 422) else 1)


async def import_list(
    settings: Settings,
    path: Path,
    *,
    name: str,
    source: str | None,
    loaded_at: datetime,
    merge: bool,
    progress: Progress | None = None,
) -> tuple[ImportReport, str]:
    """Import ``path`` into list ``name`` by the way the module doc says; (report, where).

    Raises:
        CommandFailed: what to print and the exit status.
        ComplianceError: the list name is not valid.
    """
    if settings.database_url is None:
        switch = SwitchClient(settings)
        # Long: a 10-million-number file takes tens of seconds to send and sort.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as http:
            if await switch.running(http):
                report = await _through_switch(
                    switch, http, path, name=name, source=source, loaded_at=loaded_at,
                    merge=merge, progress=progress,
                )  # fmt: skip
                return report, f"stored through the running switch at {switch.url}"

    async def work(store: Store) -> ImportReport:
        return await import_into(
            store, path, name=name, source=source, loaded_at=loaded_at, merge=merge,
            progress=progress,
        )  # fmt: skip

    report = await _with_store(settings, work, create=True)
    where = "DCE_DATABASE_URL" if settings.database_url else f"{settings.data_dir / 'pg'}"
    return report, f"stored in the database ({where})"
