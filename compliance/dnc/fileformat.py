"""DNC lists on disk: ``NAME.f64`` holds the keys, ``NAME.json`` their metadata.

``NAME.f64`` is the list's sorted key array as raw little-endian doubles, and ``NAME.json`` its
metadata (format, source, loaded_at, max_age_days, count, CRC-32), so reloading 10 million
numbers is one read and one ``frombytes``. Each file is written through a temporary file and a
rename, data first: a crash leaves the old pair, or a new ``.f64`` whose CRC the old ``.json``
rejects, never a silently wrong list.
"""

from __future__ import annotations

import os
import sys
import zlib
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec

from compliance.dnc.lookup import DncList, check_name
from compliance.errors import DncStoreCorrupt

__all__ = ["delete_list", "load_lists", "save_list"]

_FORMAT: Final = "dce-dnc-f64-v1"


class _Meta(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    name: str
    source: str
    loaded_at: datetime
    max_age_days: int | None
    count: int
    crc32: int


_META_DECODER = msgspec.json.Decoder(_Meta)


def save_list(d: Path, lst: DncList) -> None:
    """Write ``lst`` as ``NAME.f64`` + ``NAME.json`` in the existing directory ``d``."""
    keys = lst.live_keys()
    if sys.byteorder != "little":
        keys = array("d", keys)
        keys.byteswap()
    data = memoryview(keys).cast("B")  # no copy of a list that may be 80 MB
    meta = _Meta(
        format=_FORMAT,
        name=lst.name,
        source=lst.source,
        loaded_at=lst.loaded_at.astimezone(UTC),
        max_age_days=lst.max_age_days,
        count=len(keys),
        crc32=zlib.crc32(data),
    )
    # Data first, then metadata, each via rename: a crash leaves the old pair or a new .f64
    # whose CRC the old .json rejects, never a silently wrong list.
    _atomic_write(d / f"{lst.name}.f64", data)
    _atomic_write(d / f"{lst.name}.json", msgspec.json.encode(meta))


def delete_list(d: Path, name: str) -> None:
    """Remove list ``name``'s files from ``d`` (missing files are fine)."""
    for suffix in (".json", ".f64"):
        (d / f"{check_name(name)}{suffix}").unlink(missing_ok=True)


def load_lists(d: Path) -> list[DncList]:
    """Every list saved in ``d``, in file-name order (missing directory: none).

    Raises:
        DncStoreCorrupt: a list's data does not match its metadata.
    """
    if not d.is_dir():
        return []
    return [_load_list(meta_path) for meta_path in sorted(d.glob("*.json"))]


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_list(meta_path: Path) -> DncList:
    try:
        meta = _META_DECODER.decode(meta_path.read_bytes())
    except (msgspec.DecodeError, OSError) as exc:
        raise DncStoreCorrupt(f"{meta_path}: {exc}") from exc
    if meta.format != _FORMAT:
        raise DncStoreCorrupt(f"{meta_path}: format {meta.format!r}, expected {_FORMAT!r}")
    data_path = meta_path.with_suffix(".f64")
    keys = array("d")
    try:
        size = data_path.stat().st_size
        if size != meta.count * 8:
            raise DncStoreCorrupt(f"{data_path}: {size} bytes, expected {meta.count * 8}")
        with data_path.open("rb") as f:
            keys.fromfile(f, meta.count)  # straight into the array: no second 8-byte copy
    except (OSError, EOFError) as exc:
        raise DncStoreCorrupt(f"{data_path}: {exc}") from exc
    if zlib.crc32(memoryview(keys).cast("B")) != meta.crc32:
        raise DncStoreCorrupt(f"{data_path}: CRC-32 mismatch")
    if sys.byteorder != "little":
        keys.byteswap()
    return DncList(
        meta.name,
        source=meta.source,
        loaded_at=meta.loaded_at,
        keys=keys,
        max_age_days=meta.max_age_days,
    )
