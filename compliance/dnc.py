"""Do-not-call lists: in-memory lookup, bulk import and on-disk persistence (domain.md §4.2).

Several named lists (federal registry, state lists, internal opt-outs, litigators), each with its
source and the date its data was pulled. A campaign names the lists it must be scrubbed against;
a list older than 31 days makes the gate fail closed for those campaigns, because the FTC safe
harbour (16 CFR 310.4(b)(3)(iv)) covers only calls scrubbed against "a version of the National
Registry obtained ... no more than 31 days prior".

Theory of operation:

- **Keys.** A number is stored as one IEEE-754 double: a NANP number (``+1`` and ten digits) as
  its ten-digit national number, any other E.164 number as its digits plus ``1e15``, so the two
  ranges never meet. Every key is an integer below 2**53 and therefore exact as a double.
- **Why doubles, not uint64.** The lists are sorted ``array('d')`` searched with ``bisect``:
  8 bytes a number (80 MB for 10 million), no per-number object. CPython sorts a list of floats
  with a specialised comparison that is about twice as fast as its sort of 34-bit ints, and
  ``bisect`` on floats draws its temporaries from the float free list, so a lookup does not reach
  the allocator. Import is dominated by that sort, so the choice is what keeps it above 1M/s.
- **Import.** ``DncImporter`` is fed bytes (a file, an HTTP body) and works on whole blocks with
  C-speed primitives: ``bytes.translate`` to find clean blocks and strip punctuation, one regex
  ``findall`` per block to pick the numbers out. The first column of each line is used (``,``,
  ``;``, tab or ``|`` end it); punctuation, quotes and a leading ``+1``/``1`` are ignored; a line
  that yields no valid NANP number, or is longer than ``MAX_LINE`` bytes, is counted as rejected.
  Files are NANP (the US and Canadian registries); other numbers go in through ``add_numbers``.
- **Persistence.** ``NAME.f64`` is the sorted key array as raw little-endian doubles, and
  ``NAME.json`` its metadata (source, loaded_at, count, CRC-32), so reloading 10 million numbers
  is one read and one ``frombytes``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import re
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import compress, islice, repeat
from operator import ne
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from compliance.errors import (
    DncListNotFound,
    DncStoreCorrupt,
    InvalidDncListName,
    InvalidStateError,
)
from compliance.numbers import normalize

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "MAX_LINE",
    "DncImporter",
    "DncList",
    "DncStore",
    "ImportReport",
    "Progress",
    "dnc_key",
    "release_memory",
]

DEFAULT_MAX_AGE_DAYS: Final = 31  # 16 CFR 310.4(b)(3)(iv)
MAX_LINE: Final = 256  # a longer line is corrupt, not a number with a comment
_INTL_OFFSET: Final = 1e15  # keys of non-NANP numbers: digits + 1e15 (< 2**53)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_FORMAT: Final = "dce-dnc-f64-v1"
_READ_SIZE: Final = 1 << 22
_DIR_MIN: Final = 1 << 14  # smaller lists fit in cache; plain bisect is as fast
_DIR_LO: Final = 2_000_000_000.0  # NANP keys: NPA 200..999
_DIR_SPAN: Final = 8_000_000_000

# One NANP number per line after cleaning: optional country code, NPA and NXX start 2-9.
_NANP_LINE = re.compile(rb"(?m)^1?([2-9][0-9]{2}[2-9][0-9]{6})$")
# First column: everything up to the first delimiter; the rest of the line is dropped.
_FIRST_COLUMN = re.compile(rb"(?m)^[^,;\t|\n]*")
_DIGITS_NL: Final = b"0123456789\n"
# Punctuation people put in numbers, quotes, CR, and the UTF-8 BOM's bytes.
_PUNCT: Final = b" \t\r-().+\"'/\xef\xbb\xbf"

# (bytes consumed so far, total bytes if known, lines read so far)
Progress = Callable[[int, int | None, int], None]


def dnc_key(e164: str) -> float:
    """The lookup key of an E.164 number, or -1.0 when ``e164`` is not one (never listed)."""
    if len(e164) == 12 and e164.startswith("+1"):
        d = e164[2:]
        if d.isdigit() and d.isascii():
            return float(d)
        return -1.0
    d = e164[1:]
    if e164.startswith("+") and 0 < len(d) <= 15 and d.isdigit() and d.isascii():
        return float(d) + _INTL_OFFSET
    return -1.0


def _key_to_e164(key: float) -> str:
    if key >= _INTL_OFFSET:
        return f"+{int(key - _INTL_OFFSET)}"
    return f"+1{int(key):010d}"


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to trim
    return trim


_MALLOC_TRIM = _load_trim()


def release_memory() -> None:
    """Give the heap that a big import used back to the OS (glibc ``malloc_trim``).

    Sorting N numbers briefly needs ~40 bytes each (a list of floats); glibc keeps the freed
    heap mapped, so without this a process that imported 10 million numbers would sit ~400 MB
    above what its lists hold. A no-op where there is no ``malloc_trim``.
    """
    gc.collect()  # a full collection also empties the interpreter's free lists
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidDncListName(f"DNC list name {name!r} must match {_NAME.pattern}")
    return name


def _sorted_unique(keys: Iterable[float]) -> array[float]:
    """Sort and drop duplicates; timsort merges an already-sorted prefix cheaply (merges)."""
    ordered = sorted(keys)
    out = array("d", ordered[:1])
    # Keep element i+1 when it differs from element i: C-level iteration over the list (its
    # floats already exist), no Python loop and no intermediate array.
    out.extend(compress(islice(ordered, 1, None), map(ne, islice(ordered, 1, None), ordered)))
    return out


class DncList:
    """One named list: sorted unique keys plus where they came from and when.

    ``max_age_days`` is how old the data may get before campaigns that require the list fail
    closed (31 for registry copies; None for internal opt-out lists that never go stale).

    Lists of ``_DIR_MIN`` keys or more get a directory over the NANP key range: bucket ``b``
    (of about eight keys) starts at ``_dir[b]``, so a lookup reads two adjacent directory slots
    and bisects one cache line instead of bisecting 80 MB (23 probes, most of them cache and
    TLB misses). It costs 4 bytes per 8 numbers (0.5 MB per million).
    """

    __slots__ = (
        "_dir",
        "_keys",
        "_loaded_at",
        "_max_age_days",
        "_nb",
        "_stale_after",
        "_tombstones",
        "_width",
        "name",
        "source",
    )

    def __init__(
        self,
        name: str,
        *,
        source: str,
        loaded_at: datetime,
        keys: array[float] | None = None,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
    ) -> None:
        if loaded_at.tzinfo is None:
            raise InvalidStateError("DncList.loaded_at must be an aware datetime")
        self.name = _check_name(name)
        self.source = source
        self._loaded_at = loaded_at
        self._max_age_days = max_age_days
        self._stale_after: datetime | None = None
        self._update_stale_after()
        self._keys: array[float] = keys if keys is not None else array("d")
        self._tombstones = 0
        self._dir: array[int] | None = None
        self._width = 1
        self._nb = 0
        self._build_directory()

    def _build_directory(self) -> None:
        keys = self._keys
        n = len(keys)
        if n < _DIR_MIN:
            self._dir = None
            return
        width = max(1, _DIR_SPAN * 8 // n)  # about eight keys a bucket
        nb = _DIR_SPAN // width + 2
        lo = int(_DIR_LO)
        # One bisect per bucket boundary, all in C: map over a range of boundaries.
        bounds = map(float, range(lo, lo + nb * width, width))
        self._dir = array("I" if n < 1 << 32 else "Q", map(bisect_left, repeat(keys), bounds))
        self._width = width
        self._nb = nb - 1

    def __len__(self) -> int:
        return len(self._keys) - self._tombstones

    def __contains__(self, key: float) -> bool:
        """Is ``key`` (from ``dnc_key``) on the list? No Python object outlives the call."""
        keys = self._keys
        d = self._dir
        if d is not None and key >= _DIR_LO:
            b = int(key - _DIR_LO) // self._width
            if b < self._nb:
                hi = d[b + 1]
                i = bisect_left(keys, key, d[b], hi)
                return i != hi and keys[i] == key
        i = bisect_left(keys, key)
        return i != len(keys) and keys[i] == key

    def contains(self, e164: str) -> bool:
        """Is this E.164 number on the list?"""
        return dnc_key(e164) in self

    def discard(self, key: float) -> bool:
        """Remove one key in place; True if it was there.

        The slot keeps its predecessor's value (a duplicate, or -2.0 at the front), so the
        array stays sorted and the directory stays right without a rebuild; ``save`` compacts.
        """
        keys = self._keys
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return False
        keys[i] = keys[i - 1] if i > 0 else -2.0
        self._tombstones += 1
        return True

    def live_keys(self) -> array[float]:
        """The sorted unique keys without removal tombstones (shared when there are none)."""
        keys = self._keys
        if not self._tombstones:
            return keys
        out = array("d")
        prev = -1.0
        for k in keys:
            if k > prev:
                out.append(k)
                prev = k
        return out

    @property
    def loaded_at(self) -> datetime:
        """When the data was pulled from its source (aware)."""
        return self._loaded_at

    @loaded_at.setter
    def loaded_at(self, value: datetime) -> None:
        if value.tzinfo is None:
            raise InvalidStateError("DncList.loaded_at must be an aware datetime")
        self._loaded_at = value
        self._update_stale_after()

    @property
    def max_age_days(self) -> int | None:
        """Days after ``loaded_at`` that the list may be used; None: never stale."""
        return self._max_age_days

    @max_age_days.setter
    def max_age_days(self, value: int | None) -> None:
        self._max_age_days = value
        self._update_stale_after()

    def _update_stale_after(self) -> None:
        # Precomputed so the per-call check is one comparison, no timedelta arithmetic.
        days = self._max_age_days
        self._stale_after = None if days is None else self._loaded_at + timedelta(days=days)

    def is_stale(self, now: datetime) -> bool:
        """Older than ``max_age_days`` at ``now`` (FTC safe harbour: 31 days)."""
        after = self._stale_after
        return after is not None and now > after

    def numbers(self) -> Iterator[str]:
        """Every number on the list as E.164, in key order (exports, tests)."""
        return map(_key_to_e164, self.live_keys())

    @property
    def nbytes(self) -> int:
        """Bytes held by the key array and its directory."""
        d = self._dir
        extra = d.itemsize * len(d) if d is not None else 0
        return self._keys.itemsize * len(self._keys) + extra

    def __repr__(self) -> str:
        return (
            f"DncList({self.name!r}, source={self.source!r}, "
            f"loaded_at={self.loaded_at.isoformat()}, numbers={len(self)})"
        )


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a bulk import did, for the CLI and ``POST /api/v1/dnc``.

    ``read`` counts non-blank lines; ``imported`` the lines that gave a number; ``rejected`` the
    corrupt, non-NANP or oversized lines (``read == imported + rejected``); ``duplicates`` the
    imported numbers already present (in the file or, when merging, in the list); ``total`` the
    list's size afterwards.
    """

    list: str
    read: int
    imported: int
    rejected: int
    duplicates: int
    total: int


class DncImporter:
    """Incremental parser of a DNC file: ``feed(bytes)`` as data arrives, then ``finish()``.

    Sans-IO so the same code serves the CLI (file chunks) and the API (request body chunks).
    """

    def __init__(self, progress: Progress | None = None, total_bytes: int | None = None) -> None:
        self._progress = progress
        self._total_bytes = total_bytes
        self._carry = b""
        self._skipping = False  # inside an oversized line, dropping bytes up to its newline
        self._keys: array[float] = array("d")
        self.bytes_read = 0
        self.read = 0
        self.rejected = 0

    @property
    def imported(self) -> int:
        return len(self._keys)

    def feed(self, data: bytes) -> None:
        """Consume the next piece of the file; complete lines are parsed at once."""
        self.bytes_read += len(data)
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skipping = False
            data = data[nl + 1 :]
        buf = self._carry + data if self._carry else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._carry = buf
        else:
            self._carry = buf[cut + 1 :]
            self._parse(buf[: cut + 1])
        if len(self._carry) > MAX_LINE:
            # A line with no end in sight: count it once and skip to its newline.
            self.read += 1
            self.rejected += 1
            self._carry = b""
            self._skipping = True
        if self._progress is not None:
            self._progress(self.bytes_read, self._total_bytes, self.read)

    def finish(self) -> array[float]:
        """Parse the last line (no trailing newline needed) and return the keys, unsorted."""
        if self._carry:
            self._parse(self._carry)
            self._carry = b""
        if self._progress is not None:
            self._progress(self.bytes_read, self._total_bytes, self.read)
        return self._keys

    def _parse(self, block: bytes) -> None:
        rest = block.translate(None, _DIGITS_NL)
        if rest:
            # CRLF files are common and otherwise clean: drop the CRs and stay on the fast path.
            block = self._clean(block) if rest.strip(b"\r") else block.replace(b"\r", b"")
        if not block:
            return
        lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        # Blank lines are neither numbers nor errors; look for them only when there can be some.
        if b"\n\n" in block or block.startswith(b"\n"):
            split = block.split(b"\n")
            lines = len(split) - split.count(b"")
        found = _NANP_LINE.findall(block)
        # int() then float() beats float() on bytes: the int parser is the faster of the two.
        self._keys.extend(map(float, map(int, found)))
        self.read += lines
        self.rejected += lines - len(found)

    def _clean(self, block: bytes) -> bytes:
        """Cut each line to its first column and strip punctuation (slow path, dirty files)."""
        rows = block.split(b"\n")
        if max(map(len, rows)) > MAX_LINE:
            kept = [r for r in rows if len(r) <= MAX_LINE]
            dropped = len(rows) - len(kept)
            self.read += dropped
            self.rejected += dropped
            rows = kept
            block = b"\n".join(rows)
        if b"," in block or b";" in block or b"\t" in block or b"|" in block:
            block = b"\n".join(_FIRST_COLUMN.findall(block))
        return block.translate(None, _PUNCT)


class DncStore:
    """All loaded DNC lists by name. The gate reads it; the API and CLI replace lists in it."""

    def __init__(self) -> None:
        self._lists: dict[str, DncList] = {}

    def get(self, name: str) -> DncList | None:
        """The list called ``name``, or None."""
        return self._lists.get(name)

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
        _check_name(name)
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
        keys = _sorted_unique(old.live_keys() + new if (merge and old is not None) else new)
        del new
        importer._keys = array("d")
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
        _check_name(name)
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
        keys = _sorted_unique(old.live_keys() + new if old is not None else new)
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

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], name: str | None = None) -> None:
        """Write one list (or all) as ``NAME.f64`` + ``NAME.json`` under ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for lst in [self[name]] if name is not None else list(self._lists.values()):
            _save_list(d, lst)

    def delete_saved(self, directory: str | os.PathLike[str], name: str) -> None:
        """Remove a persisted list's files (after ``remove``)."""
        d = Path(directory)
        for suffix in (".json", ".f64"):
            (d / f"{_check_name(name)}{suffix}").unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DncStore:
        """Load every persisted list under ``directory`` (missing directory: empty store).

        Raises:
            DncStoreCorrupt: a list's data does not match its metadata.
        """
        store = cls()
        d = Path(directory)
        if not d.is_dir():
            return store
        for meta_path in sorted(d.glob("*.json")):
            store.put(_load_list(meta_path))
        return store


class _Meta(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    name: str
    source: str
    loaded_at: datetime
    max_age_days: int | None
    count: int
    crc32: int


_META_DECODER = msgspec.json.Decoder(_Meta)


def _save_list(d: Path, lst: DncList) -> None:
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
