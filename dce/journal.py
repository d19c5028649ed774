"""The call journal: what it takes to finish every call, and write its one CDR, after a crash.

Theory of operation
-------------------
Every admitted call leaves records in an append-only file under ``DCE_DATA_DIR/journal``:

* ``Start`` when routing begins (who called whom, when);
* ``Up`` when the buyer's 2xx is relayed: both legs' dialogs (enough to send a BYE in each)
  and the CDR as far as it is known then, with the money terms of the buyer that answered;
* ``Confirmed`` when the caller confirms the answered call (its ACK);
* ``End`` with the call's complete CDR, when the call ends;
* ``Durable`` once the CDR writer has that CDR in PostgreSQL or in its fsynced spool;
* ``Beat``, once a second: the last moment this process is known to have been alive.

Records are msgspec-encoded JSON lines. A peer's bytes need not be valid UTF-8: CDRs are
journaled cleaned (store/cdrtext.py, as the writer stores them), and the raw strings of a
``Start`` and of the dialogs are escaped losslessly and restored when read back, so that a BYE
rebuilt from them is exact. The pump appends them as effects are carried out and
writes the buffer with one ``os.write`` at the end of each pump turn, before the next input
is read: a ``kill -9`` loses nothing written. ``fsync`` runs off the loop every
``DCE_JOURNAL_SYNC`` (default 100 ms): a power loss can lose that last interval.

The file is a segment; a new one starts past 16 MiB, and an old segment is deleted once every
call that started in it has a durable CDR. At start (before any call is admitted) the
segments left by an earlier process are read by :func:`plan_recovery`:

* a call with an ``End``: its CDR is written again (the writer ignores one already stored);
  every CDR of the plan is cleaned already (``writer.submit(cdr, escaped=True)``);
* a call that was ``Up`` and never ended: BYE on both legs, and a CDR with disposition
  ``interrupted`` whose duration runs from the answer to the last ``Beat``, billed by the
  usual rule (connected, and at least the buyer's minimum duration);
* a call that only ``Start``ed: a CDR ``interrupted``, not connected, never billable.

Then those segments are deleted once the CDRs are durable. So every admitted call leaves
exactly one CDR, crash or not; see docs/cdr.md "Crash recovery" for what is not guaranteed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec

from compliance.numbers import normalize
from exchange.money import share
from store.cdr import Cdr, Disposition
from store.cdrtext import clean_cdr, clean_text, plain, restore_text
from switch.dialog import DialogSnapshot
from switch.record import HangupSide

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
_SUFFIX = ".jnl"


class Start(msgspec.Struct, tag="start", frozen=True, kw_only=True, gc=False):
    call_id: str
    trunk_id: str
    source: str
    caller: str
    called: str
    received_at: datetime


class Up(msgspec.Struct, tag="up", frozen=True, kw_only=True, gc=False):
    """The call as it stands at the answer: its CDR so far and its money terms."""

    cdr: Cdr
    min_duration_s: int
    payout_pct: Decimal | None  # the seller's share, None: unknown trunk (no payout)
    a_leg: DialogSnapshot
    b_leg: DialogSnapshot


class Confirmed(msgspec.Struct, tag="ok", frozen=True, kw_only=True, gc=False):
    call_id: str


class End(msgspec.Struct, tag="end", frozen=True, kw_only=True, gc=False):
    cdr: Cdr


class Durable(msgspec.Struct, tag="durable", frozen=True, kw_only=True, gc=False):
    call_ids: list[str]


class Beat(msgspec.Struct, tag="beat", frozen=True, kw_only=True, gc=False):
    at: datetime


Record = Start | Up | Confirmed | End | Durable | Beat
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


# ------------------------------------------------------------------------------ recovery


@dataclass(slots=True)
class _Seen:
    start: Start | None = None
    up: Up | None = None
    confirmed: bool = False
    end: Cdr | None = None
    durable: bool = False


@dataclass(slots=True)
class Recovery:
    """What a new process must do for the calls an earlier one left behind."""

    cdrs: list[Cdr] = field(default_factory=list)  # to write (again)
    legs: list[DialogSnapshot] = field(default_factory=list)  # to BYE
    interrupted: int = 0  # calls that were up and ended here
    unanswered: int = 0  # calls that were still being set up
    rewritten: int = 0  # finished calls whose CDR may not have reached the writer
    bad_lines: int = 0  # torn or unreadable lines (a write cut by the crash)


def read_records(lines: Iterable[bytes], recovery: Recovery) -> Iterator[Record]:
    for line in lines:
        if not line.strip():
            continue
        try:
            yield _decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            recovery.bad_lines += 1


_ANY = 1 << 62  # no length limit: escaping only


def safe_start(start: Start) -> Start:
    if plain([start.caller, start.called, start.trunk_id]):
        return start  # nothing to escape: the usual call
    return msgspec.structs.replace(
        start,
        caller=clean_text(start.caller, _ANY),
        called=clean_text(start.called, _ANY),
        trunk_id=clean_text(start.trunk_id, _ANY),
    )


def safe_up(up: Up) -> Up:
    """An Up record that can be encoded whatever bytes the peers sent."""
    cdr = clean_cdr(up.cdr)
    a_leg, b_leg = _safe_leg(up.a_leg), _safe_leg(up.b_leg)
    if cdr is up.cdr and a_leg is up.a_leg and b_leg is up.b_leg:
        return up  # nothing to escape: the usual call
    return msgspec.structs.replace(up, cdr=cdr, a_leg=a_leg, b_leg=b_leg)


def _safe_leg(leg: DialogSnapshot) -> DialogSnapshot:
    texts = [leg.call_id, leg.local_tag, leg.remote_tag or "", leg.local_uri, leg.remote_uri,
             leg.remote_target, leg.host, *leg.route_set]
    return leg if plain(texts) else _leg(leg, _escape)


def _escape(value: str) -> str:
    return clean_text(value, _ANY)


def _leg(leg: DialogSnapshot, convert: Callable[[str], str]) -> DialogSnapshot:
    return msgspec.structs.replace(
        leg,
        call_id=convert(leg.call_id),
        local_tag=convert(leg.local_tag),
        remote_tag=convert(leg.remote_tag) if leg.remote_tag is not None else None,
        local_uri=convert(leg.local_uri),
        remote_uri=convert(leg.remote_uri),
        remote_target=convert(leg.remote_target),
        route_set=[convert(r) for r in leg.route_set],
        host=convert(leg.host),
    )


def plan_recovery(records: Iterable[Record], recovery: Recovery | None = None) -> Recovery:
    """Decide, from an earlier process's records, which CDRs to write and which legs to end."""
    out = recovery if recovery is not None else Recovery()
    calls: dict[str, _Seen] = {}
    last_beat: datetime | None = None
    for rec in records:
        match rec:
            case Start():
                calls.setdefault(rec.call_id, _Seen()).start = rec
            case Up():
                calls.setdefault(rec.cdr.call_id, _Seen()).up = rec
            case Confirmed():
                calls.setdefault(rec.call_id, _Seen()).confirmed = True
            case End():
                calls.setdefault(rec.cdr.call_id, _Seen()).end = rec.cdr
            case Durable():
                for call_id in rec.call_ids:
                    calls.setdefault(call_id, _Seen()).durable = True
            case Beat():
                last_beat = rec.at if last_beat is None else max(last_beat, rec.at)
    for call_id, seen in calls.items():
        if seen.durable:
            continue
        if seen.end is not None:
            out.cdrs.append(seen.end)
            out.rewritten += 1
        elif seen.up is not None:
            out.cdrs.append(_interrupted_up(seen.up, seen.confirmed, last_beat))
            out.legs.extend((_leg(seen.up.a_leg, restore_text), _leg(seen.up.b_leg, restore_text)))
            out.interrupted += 1
        elif seen.start is not None:
            out.cdrs.append(_interrupted_start(seen.start, last_beat))
            out.unanswered += 1
        else:
            logger.warning("journal: call with no start record", extra={"call_id": call_id})
    return out


def _interrupted_up(up: Up, confirmed: bool, last_beat: datetime | None) -> Cdr:
    cdr = msgspec.structs.replace(up.cdr)
    answered = cdr.answered_at or cdr.received_at
    ended = max(last_beat, answered) if last_beat is not None else answered
    cdr.ended_at = ended
    cdr.disposition = Disposition.INTERRUPTED
    cdr.hangup_side = HangupSide.SYSTEM
    cdr.rule = "crash_recovery"
    if not confirmed:
        # The caller never confirmed the answer before the crash: not connected.
        cdr.answered_at = None
        cdr.duration_ms = 0
        cdr.billable = False
        cdr.price = cdr.payout = None
        return cdr
    cdr.duration_ms = (ended - answered) // timedelta(milliseconds=1)
    cdr.billable = cdr.duration_ms >= up.min_duration_s * 1000 and cdr.buyer_id is not None
    if cdr.billable and cdr.price is not None:
        cdr.payout = share(cdr.price, up.payout_pct) if up.payout_pct is not None else None
    else:
        cdr.price = cdr.payout = None
    return cdr


def _interrupted_start(start: Start, last_beat: datetime | None) -> Cdr:
    ended = max(last_beat, start.received_at) if last_beat is not None else start.received_at
    return Cdr(
        call_id=start.call_id,
        a_call_id="",
        trunk_id=start.trunk_id or None,
        source=start.source,
        caller=normalize(start.caller) or start.caller,
        called=normalize(start.called) or start.called,
        received_at=start.received_at,
        ended_at=ended,
        disposition=Disposition.INTERRUPTED,
        sip_status=500,
        hangup_side=HangupSide.SYSTEM,
        rule="crash_recovery",
    )


# ------------------------------------------------------------------------------- the file


class Journal:
    """This process's journal segments; see the module docstring."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._buf: list[bytes] = []
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._dirty = False
        self._open: dict[Path, set[str]] = {}  # segment -> calls started there, not durable
        self._segment_of: dict[str, Path] = {}
        self.records = 0
        self.bytes = 0
        self.syncs = 0

    # -- recovery (at start, before the first call) --------------------------------------

    def leftovers(self) -> list[Path]:
        """Segments of earlier processes, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*" + _SUFFIX) if p != self._path)

    def recover(self) -> tuple[Recovery, list[Path]]:
        """Plan what the earlier processes left; delete the segments with :meth:`forget`."""
        recovery = Recovery()
        paths = self.leftovers()
        lines: list[bytes] = []
        for path in paths:
            lines.extend(path.read_bytes().split(b"\n"))
        plan_recovery(read_records(lines, recovery), recovery)
        return recovery, paths

    @staticmethod
    def forget(paths: Iterable[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- appending ---------------------------------------------------------------------

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rotate()

    def append(self, record: Record) -> None:
        data = _encoder.encode(record) + b"\n"
        self._buf.append(data)
        self.records += 1
        call_id = _started(record)
        if call_id is not None and self._path is not None and call_id not in self._segment_of:
            self._open.setdefault(self._path, set()).add(call_id)
            self._segment_of[call_id] = self._path

    def flush(self) -> None:
        """Hand the buffered records to the kernel (one write); cheap when there are none."""
        if not self._buf or self._fd < 0:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)
        self.bytes += len(data)
        self._dirty = True
        if self._size >= self.segment_bytes:
            self._rotate()

    def sync(self) -> None:
        """fsync the current segment (blocking: run it off the event loop)."""
        fd = self._fd
        if fd >= 0 and self._dirty:
            self._dirty = False
            with contextlib.suppress(OSError):
                os.fsync(fd)
                self.syncs += 1

    def durable(self, call_ids: Iterable[str]) -> None:
        """These calls' CDRs are safe: note it, and drop segments that hold nothing open."""
        ids = list(call_ids)
        if not ids:
            return
        self.append(Durable(call_ids=ids))
        for call_id in ids:
            path = self._segment_of.pop(call_id, None)
            if path is None:
                continue
            pending = self._open.get(path)
            if pending is not None:
                pending.discard(call_id)
                if not pending and path != self._path:
                    del self._open[path]
                    self.forget([path])

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        # Segments whose calls all have durable CDRs are not needed by anyone (the current
        # one included: a clean stop leaves no journal unless a CDR is still not safe).
        current = self._path
        for path, pending in list(self._open.items()):
            if not pending:
                self.forget([path])
        if current is not None and not self._open.get(current):
            self.forget([current])

    @property
    def open_calls(self) -> int:
        return len(self._segment_of)

    def _rotate(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            old = self._path
            if old is not None and not self._open.get(old):
                self._open.pop(old, None)
                self.forget([old])
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:04d}{_SUFFIX}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0


def _started(record: Record) -> str | None:
    if isinstance(record, Start):
        return record.call_id
    if isinstance(record, End) and record.cdr.call_id:
        return record.cdr.call_id  # calls refused before routing start and end at once
    return None
