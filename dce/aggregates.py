"""The dashboard's last hour, in memory: 10-second slots of calls and money (``/dashboard``).

Theory of operation
-------------------
``LiveStats`` is fed by the pump (dce/pump.py) as calls go: ``routed()`` when a call reaches
routing (an arrival), ``connected()`` when a buyer answers, ``ended(cdr)`` with the CDR of
every call; a call refused before routing (a trunk limit, overload) is an arrival at its end.
The dashboard (dce/dashboard.py) reads ``snapshot()`` once a second for each page, and calls
``sample()`` once a second with the switch's live-call count. Nothing here waits or reads a
clock: times are epoch seconds passed in.

A ring of ``SLOTS`` slots of ``SLOT_S`` seconds covers the last hour. Each slot holds, per
(buyer, campaign) cell, the CDRs that ended in it (calls, answered, billable, revenue, payout,
talk time), the rules of calls that did not connect, per buyer, the arrivals, and the highest
live and connected counts sampled. Running sums over the whole ring (``_window``, ``_rules``)
gain each CDR as it comes and lose each slot as the ring moves past it, so the hour's totals
cost nothing per update; a snapshot only folds those sums by campaign or buyer and reads the
slots once for the plots. A buyer's snapshot holds only the cells of its own calls, and no
payout or margin.

At start the ring is seeded from the database (store/reports.py ``recent``) with what ended
before this process began; what ends later comes from the pump only, so nothing counts twice.

"Answered" is a call the caller was connected on (``answered_at`` set), as in the reports.
Money is integer micro-dollars here and decimal strings in a snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from exchange.money import to_decimal
from store.cdr import Cdr
from store.reports import RecentArrivals, RecentTally, Tally

__all__ = ["SLOTS", "SLOT_S", "TABLE_ROWS", "LiveStats"]

SLOT_S: Final = 10
SLOTS: Final = 360  # one hour
TABLE_ROWS: Final = 50  # campaigns or buyers shown, most calls first
TOP_RULES: Final = 10
CPS_SLOTS: Final = 6  # calls per second over the last minute

Cell = tuple[str | None, str | None]  # (buyer_id, campaign_id)


def _view(t: Tally, operator: bool) -> dict[str, Any]:
    """A tally as a snapshot shows it; payout and margin only for the operator."""
    out: dict[str, Any] = {
        "calls": t.calls,
        "answered": t.answered,
        "billable": t.billable,
        "answer_rate": t.answer_rate,
        "avg_duration_s": t.avg_duration_s(1),
        "revenue": str(to_decimal(t.revenue)),
    }
    if operator:
        out["payout"] = str(to_decimal(t.payout))
        out["margin"] = str(to_decimal(t.revenue - t.payout))
    return out


@dataclass(slots=True)
class _Slot:
    index: int  # floor(epoch seconds / SLOT_S)
    cells: dict[Cell, Tally] = field(default_factory=dict)
    # The same, folded for the plots: a snapshot reads one Tally per slot, not every cell.
    total: Tally = field(default_factory=Tally)
    by_buyer: dict[str | None, Tally] = field(default_factory=dict)
    rules: dict[tuple[str | None, str], int] = field(default_factory=dict)  # (buyer, rule)
    arrivals: int = 0
    live: int = 0  # the highest live-call count sampled in the slot
    connected: dict[str | None, int] = field(default_factory=dict)  # per buyer, highest


def _tally_of(cdr: Cdr) -> Tally:
    answered = cdr.answered_at is not None
    return Tally(
        calls=1,
        answered=int(answered),
        billable=int(cdr.billable),
        # Price and payout are set only on billable calls (docs/cdr.md).
        revenue=cdr.price or 0,
        payout=cdr.payout or 0,
        talk_ms=cdr.duration_ms if answered else 0,
    )


class LiveStats:
    """The last hour of calls (module docstring). One per switch; all on the event loop."""

    def __init__(self, started_at: float, slot_s: int = SLOT_S, slots: int = SLOTS) -> None:
        self.started_at = started_at  # epoch s: the seed covers what ended before
        self.slot_s = slot_s
        self.slots = slots
        self._ring: list[_Slot] = []
        self._head: int | None = None  # index of the newest slot
        self._window: dict[Cell, Tally] = {}
        self._rules: dict[tuple[str | None, str], int] = {}
        self._routed: set[str] = set()  # calls counted as arrivals, not yet ended
        self._up: dict[str, Cell] = {}  # connected calls
        self.version = 0  # bumped by every change: a cache key for snapshots

    # -- the ring ------------------------------------------------------------------------------

    def _index(self, t: float) -> int:
        return math.floor(t / self.slot_s)

    def _advance(self, index: int) -> None:
        """Move the newest slot to ``index``; slots that fall out leave the running sums."""
        head = self._head
        if head is None:
            self._ring = [_Slot(index=-1) for _ in range(self.slots)]
            head = index - self.slots
        elif index <= head:
            return
        for i in range(max(head + 1, index - self.slots + 1), index + 1):
            pos = i % self.slots
            old = self._ring[pos]
            for cell, tally in old.cells.items():
                total = self._window[cell]
                total.add(tally, -1)
                if total.calls == 0:
                    del self._window[cell]
            for key, n in old.rules.items():
                left = self._rules[key] - n
                if left:
                    self._rules[key] = left
                else:
                    del self._rules[key]
            self._ring[pos] = _Slot(index=i)
        self._head = index
        self.version += 1

    def _slot(self, t: float) -> _Slot | None:
        """The slot of time ``t``, moving the ring forward if needed; None if older than it."""
        index = self._index(t)
        self._advance(index)
        assert self._head is not None
        if index <= self._head - self.slots:
            return None
        return self._ring[index % self.slots]

    def _add(self, slot: _Slot, cell: Cell, tally: Tally, rule: str | None) -> None:
        # get, then a new Tally only when missing: setdefault would build one every time.
        cells, by_buyer, window = slot.cells, slot.by_buyer, self._window
        if (part := cells.get(cell)) is None:
            part = cells[cell] = Tally()
        part.add(tally)
        slot.total.add(tally)
        if (part := by_buyer.get(cell[0])) is None:
            part = by_buyer[cell[0]] = Tally()
        part.add(tally)
        if (part := window.get(cell)) is None:
            part = window[cell] = Tally()
        part.add(tally)
        if rule is not None:
            key = (cell[0], rule)
            slot.rules[key] = slot.rules.get(key, 0) + tally.calls
            self._rules[key] = self._rules.get(key, 0) + tally.calls
        self.version += 1

    # -- inputs --------------------------------------------------------------------------------

    def routed(self, call_id: str, now: float) -> None:
        """A call reached routing: an arrival."""
        self._routed.add(call_id)
        slot = self._slot(now)
        if slot is not None:
            slot.arrivals += 1
            self.version += 1

    def connected(self, call_id: str, buyer_id: str | None, campaign_id: str | None) -> None:
        """A buyer answered the call: it is live for that buyer until it ends."""
        self._up[call_id] = (buyer_id, campaign_id)
        self.version += 1

    def ended(self, cdr: Cdr) -> None:
        """A call's CDR, in the slot of its end."""
        self._up.pop(cdr.call_id, None)
        end = cdr.ended_at.timestamp()
        if cdr.call_id in self._routed:
            self._routed.discard(cdr.call_id)
        else:  # refused before routing: it arrives and ends at once
            slot = self._slot(cdr.received_at.timestamp())
            if slot is not None:
                slot.arrivals += 1
        slot = self._slot(end)
        if slot is None:
            return
        rule = cdr.rule if cdr.answered_at is None else None
        self._add(slot, (cdr.buyer_id, cdr.campaign_id), _tally_of(cdr), rule)

    def sample(self, now: float, live_calls: int) -> None:
        """The switch's live calls now (about once a second): the live-calls plot."""
        slot = self._slot(now)
        if slot is None:
            return
        slot.live = max(slot.live, live_calls)
        per_buyer: dict[str | None, int] = {}
        for buyer, _ in self._up.values():
            per_buyer[buyer] = per_buyer.get(buyer, 0) + 1
        for buyer, n in per_buyer.items():
            slot.connected[buyer] = max(slot.connected.get(buyer, 0), n)

    def seed(
        self, now: float, tallies: Iterable[RecentTally], arrivals: Iterable[RecentArrivals]
    ) -> None:
        """What the database holds of the last hour (store/reports.py ``recent``, in slots of
        this ring's size), added to what the pump has fed since the start."""
        self._advance(self._index(now))
        for t in tallies:
            slot = self._slot(t.slot * self.slot_s)
            if slot is None:
                continue
            tally = Tally(t.calls, t.answered, t.billable, t.revenue, t.payout, t.talk_ms)
            self._add(slot, (t.buyer_id, t.campaign_id), tally, t.rule)
        for a in arrivals:
            slot = self._slot(a.slot * self.slot_s)
            if slot is not None:
                slot.arrivals += a.calls
        self.version += 1

    # -- output --------------------------------------------------------------------------------

    def live_for(self, buyer_id: str) -> int:
        return sum(1 for b, _ in self._up.values() if b == buyer_id)

    def snapshot(self, now: float, *, buyer_id: str | None, live_calls: int) -> dict[str, Any]:
        """The dashboard's data: the operator's (``buyer_id`` None) or one buyer's.

        ``live_calls`` is the switch's count (calls being set up included); a buyer sees its
        connected calls instead.
        """
        operator = buyer_id is None
        index = self._index(now)
        self._advance(index)

        def mine(cell: Cell) -> bool:
            return operator or cell[0] == buyer_id

        total = Tally()
        by_campaign: dict[str | None, Tally] = {}
        by_buyer: dict[str | None, Tally] = {}
        for cell, tally in self._window.items():
            if not mine(cell):
                continue
            total.add(tally)
            by_buyer.setdefault(cell[0], Tally()).add(tally)
            by_campaign.setdefault(cell[1], Tally()).add(tally)
        up = [cell for cell in self._up.values() if mine(cell)]
        live_campaign: dict[str | None, int] = {}
        live_buyer: dict[str | None, int] = {}
        for b, c in up:
            live_buyer[b] = live_buyer.get(b, 0) + 1
            live_campaign[c] = live_campaign.get(c, 0) + 1
        for c in live_campaign:
            by_campaign.setdefault(c, Tally())
        for b in live_buyer:
            by_buyer.setdefault(b, Tally())

        slots = [self._ring[i % self.slots] for i in range(index - self.slots + 1, index + 1)]
        # Calls per second over the last minute: the current slot is partly elapsed.
        recent = slots[-CPS_SLOTS:]
        span = max(now - recent[0].index * self.slot_s, 1.0)
        none = Tally()
        points = [s.total if operator else s.by_buyer.get(buyer_id, none) for s in slots]
        if operator:
            recent_calls = sum(s.arrivals for s in recent)
        else:
            recent_calls = sum(p.calls for p in points[-CPS_SLOTS:])
        totals = _view(total, operator)
        totals["live_calls"] = live_calls if operator else len(up)
        totals["cps"] = round(recent_calls / span, 2)
        merged = sorted(self._merged_rules(buyer_id).items(), key=lambda kv: (-kv[1], kv[0]))
        rules = [{"rule": rule, "calls": n} for rule, n in merged[:TOP_RULES]]
        series: dict[str, Any] = {
            "start": slots[0].index * self.slot_s,
            "calls": [p.calls for p in points],
            "answered": [p.answered for p in points],
            "revenue_micros": [p.revenue for p in points],
            "live": [s.live if operator else s.connected.get(buyer_id, 0) for s in slots],
        }
        if operator:
            series["arrivals"] = [s.arrivals for s in slots]
        return {
            "role": "operator" if operator else "buyer",
            "buyer_id": buyer_id,
            "now": now,
            "slot_s": self.slot_s,
            "window_s": self.slot_s * self.slots,
            "totals": totals,
            "rules": rules,
            "campaigns": _table(by_campaign, live_campaign, operator),
            "buyers": _table(by_buyer, live_buyer, operator),
            "series": series,
        }

    def _merged_rules(self, buyer_id: str | None) -> dict[str, int]:
        out: dict[str, int] = {}
        for (b, rule), n in self._rules.items():
            if buyer_id is None or b == buyer_id:
                out[rule] = out.get(rule, 0) + n
        return out


def _table(
    tallies: dict[str | None, Tally], live: dict[str | None, int], operator: bool
) -> list[dict[str, Any]]:
    """Rows most calls first (then id; calls without an id last), at most TABLE_ROWS."""
    order = sorted(tallies.items(), key=lambda kv: (-kv[1].calls, kv[0] is None, kv[0] or ""))
    return [
        {"id": key, **_view(tally, operator), "live": live.get(key, 0)}
        for key, tally in order[:TABLE_ROWS]
    ]
