"""Parsing DNC number files in bulk: ``DncImporter`` turns bytes into lookup keys, with counts.

``DncImporter`` is fed bytes (a file, an HTTP body) and works on whole blocks with C-speed
primitives: ``bytes.translate`` to find clean blocks and strip punctuation, one regex ``findall``
per block to pick the numbers out. The first column of each line is used (``,``, ``;``, tab or
``|`` end it); punctuation, quotes and a leading ``+1``/``1`` are ignored; a line that yields no
valid NANP number, or is longer than ``MAX_LINE`` bytes, is counted as rejected. Files are NANP
(the US and Canadian registries); other numbers go in through ``DncStore.add_numbers``.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable
from typing import Final

import msgspec

__all__ = ["MAX_LINE", "DncImporter", "ImportReport", "Progress"]

MAX_LINE: Final = 256  # a longer line is corrupt, not a number with a comment

# One NANP number per line after cleaning: optional country code, NPA and NXX start 2-9.
_NANP_LINE = re.compile(rb"(?m)^1?([2-9][0-9]{2}[2-9][0-9]{6})$")
# First column: everything up to the first delimiter; the rest of the line is dropped.
_FIRST_COLUMN = re.compile(rb"(?m)^[^,;\t|\n]*")
_DIGITS_NL: Final = b"0123456789\n"
# Punctuation people put in numbers, quotes, CR, and the UTF-8 BOM's bytes.
_PUNCT: Final = b" \t\r-().+\"'/\xef\xbb\xbf"

# (bytes consumed so far, total bytes if known, lines read so far)
Progress = Callable[[int, int | None, int], None]


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

    def drop_keys(self) -> None:
        """Forget the parsed keys once they are sorted into a list, so their memory can go."""
        self._keys = array("d")

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
