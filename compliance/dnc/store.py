"""``DncStore``: every loaded DNC list by name, which the gate reads and the API and CLI update.

Lists are replaced whole (an atomic swap: a lookup sees the old list or the new one), whether
they come from a bulk import (``importer``), a few numbers added through the API, or disk
(``fileformat``).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final

from compliance.dnc.fileformat import delete_list, load_lists, save_list
from compliance.dnc.importer import DncImporter, ImportReport, Progress
from compliance.dnc.lookup import DEFAULT_MAX_AGE_DAYS, DncList, check_name, dnc_key, sorted_unique
from compliance.dnc.memory import release_memory
from compliance.errors import DncListNotFound
from compliance.numbers import normalize

__all__ = ["DncStore", "build_import"]

_READ_SIZE: Final = 1 << 22


class DncStore:
    """All loaded DNC lists by name. The gate reads it; the API and CLI replace lists in it."""

    def __init__(self) -> None:
        self._lists: dict[str, DncList] = {}
        # get(name): the list called ``name``, or None. The dict's own method, bound once: the
        # gate calls it twice for every list a campaign requires, on every call.
        self.get: Callable[[str], DncList | None] = self._lists.get

    def __getitem__(self, name: str) -> DncList:
        try:
            return self._lists[name]
        except KeyError:
            raise DncListNotFound(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._lists

    def __iter__(self) -> Iterator[DncList]:
        return iter(list(self._lists.values()))

    def __len__(self) -> int:
        return len(self._lists)

    def put(self, lst: DncList) -> None:
        """Add or replace a list (an atomic swap: lookups see the old or the new list)."""
        self._lists[lst.name] = lst

    def remove(self, name: str) -> bool:
        """Drop a list from memory; True if it existed."""
        return self._lists.pop(name, None) is not None

    def lookup(self, e164: str) -> list[str]:
        """Names of the lists that hold ``e164`` (the API's single-number lookup)."""
        key = dnc_key(e164)
        return [lst.name for lst in self._lists.values() if key in lst]

    # -- bulk import and single numbers --------------------------------------------------------

    def import_stream(
        self,
        name: str,
        stream: BinaryIO,
        *,
        source: str,
        loaded_at: datetime,
        merge: bool = False,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
        progress: Progress | None = None,
        total_bytes: int | None = None,
    ) -> ImportReport:
        """Bulk-import a CSV or plain-text file of numbers (first column) into list ``name``.

        Args:
            name: the list; created if missing, replaced unless ``merge``.
            stream: a binary file object; read in 4 MiB blocks.
            source: where the data came from (e.g. "FTC SAN 1234 download").
            loaded_at: when the data was pulled from its source; staleness counts from here.
            merge: add to the existing numbers instead of replacing them.
            max_age_days: see ``DncList``.
            progress: called after each block with (bytes read, ``total_bytes``, lines read).
        """
        check_name(name)
        importer = DncImporter(progress, total_bytes)
        while chunk := stream.read(_READ_SIZE):
            importer.feed(chunk)
        return self.finish_import(
            name,
            importer,
            source=source,
            loaded_at=loaded_at,
            merge=merge,
            max_age_days=max_age_days,
        )

    def import_file(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        source: str | None = None,
        loaded_at: datetime,
        merge: bool = False,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
        progress: Progress | None = None,
    ) -> ImportReport:
        """``import_stream`` on a file; ``source`` defaults to the file name."""
        p = Path(path)
        with p.open("rb") as f:
            return self.import_stream(
                name,
                f,
                source=source if source is not None else p.name,
                loaded_at=loaded_at,
                merge=merge,
                max_age_days=max_age_days,
                progress=progress,
                total_bytes=p.stat().st_size,
            )

    def finish_import(
        self,
        name: str,
        importer: DncImporter,
        *,
        source: str,
        loaded_at: datetime,
        merge: bool = False,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
    ) -> ImportReport:
        """Sort what ``importer`` parsed into list ``name`` (for callers that feed it)."""
        new = importer.finish()
        imported = len(new)
        old = self._lists.get(name)
        before = len(old) if (merge and old is not None) else 0
        keys = sorted_unique(old.live_keys() + new if (merge and old is not None) else new)
        del new
        importer.drop_keys()
        release_memory()
        self.put(
            DncList(name, source=source, loaded_at=loaded_at, keys=keys, max_age_days=max_age_days)
        )
        return ImportReport(
            list=name,
            read=importer.read,
            imported=imported,
            rejected=importer.rejected,
            duplicates=imported - (len(keys) - before),
            total=len(keys),
        )

    def add_numbers(
        self,
        name: str,
        numbers: Iterable[str],
        *,
        source: str,
        loaded_at: datetime,
        max_age_days: int | None = None,
    ) -> ImportReport:
        """Add a few numbers in any format (the API's single adds, internal opt-outs).

        Creates the list if needed (by default one that never goes stale). Numbers that do not
        normalise count as rejected.
        """
        check_name(name)
        new = array("d")
        read = rejected = 0
        for raw in numbers:
            read += 1
            e164 = normalize(raw)
            key = dnc_key(e164) if e164 is not None else -1.0
            if key < 0:
                rejected += 1
            else:
                new.append(key)
        old = self._lists.get(name)
        before = len(old) if old is not None else 0
        keys = sorted_unique(old.live_keys() + new if old is not None else new)
        if old is not None:
            max_age_days = old.max_age_days
        self.put(
            DncList(name, source=source, loaded_at=loaded_at, keys=keys, max_age_days=max_age_days)
        )
        imported = read - rejected
        return ImportReport(
            list=name,
            read=read,
            imported=imported,
            rejected=rejected,
            duplicates=imported - (len(keys) - before),
            total=len(keys),
        )

    def remove_numbers(self, name: str, numbers: Iterable[str]) -> int:
        """Delete numbers (E.164) from list ``name``; returns how many were there."""
        lst = self[name]
        return sum(lst.discard(dnc_key(e164)) for e164 in numbers)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], name: str | None = None) -> None:
        """Write one list (or all) as ``NAME.f64`` + ``NAME.json`` under ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for lst in [self[name]] if name is not None else list(self._lists.values()):
            save_list(d, lst)

    def delete_saved(self, directory: str | os.PathLike[str], name: str) -> None:
        """Remove a persisted list's files (after ``remove``)."""
        delete_list(Path(directory), name)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DncStore:
        """Load every persisted list under ``directory`` (missing directory: empty store).

        Raises:
            DncStoreCorrupt: a list's data does not match its metadata.
        """
        store = cls()
        for lst in load_lists(Path(directory)):
            store.put(lst)
        return store


def build_import(
    name: str,
    importer: DncImporter,
    base: DncList | None,
    *,
    source: str,
    loaded_at: datetime,
    merge: bool,
    max_age_days: int | None,
) -> tuple[DncList, ImportReport]:
    """List ``name`` built from what ``importer`` parsed (merged into ``base`` if given).

    A pure function of picklable values, so that the API can run it in another process: the
    sort of millions of numbers holds the GIL for seconds, which a thread would not avoid.
    """
    scratch = DncStore()
    if base is not None:
        scratch.put(base)
    report = scratch.finish_import(
        name, importer, source=source, loaded_at=loaded_at, merge=merge, max_age_days=max_age_days
    )
    return scratch[name], report
