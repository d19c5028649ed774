"""The running switch's live calls for the admin API (api/live.py ``LiveSource``).

One view joins three owners of a call's state: the switch core (who called whom, its state,
the attempt in progress, in monotonic time), the routing bridge (campaign and buyer) and the
media manager (packet and byte counters so far). The API gets plain dicts (``LiveCall``
fields) so that it never imports ``switch``. Hanging up goes through the core
(``SwitchCore.hang_up``) and the pump sends what it produced at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from api.live import LiveSource
from dce.bridge import CallBridge
from media.anchor import MediaManager
from switch.call import Call, CallState
from switch.core import SwitchCore

__all__ = ["LiveCalls"]

# The core's states as the API names them (``ended`` calls are no longer live).
_STATES: Final = {
    CallState.ROUTING: "routing",
    CallState.MEDIA: "media",
    CallState.CALLING: "calling",
    CallState.EARLY: "ringing",
    CallState.ANSWERED: "answered",
}
_NO_MEDIA: Final = dict.fromkeys(
    ("packets_a_to_b", "packets_b_to_a", "bytes_a_to_b", "bytes_b_to_a", "packets_dropped")
)


class LiveCalls:
    """Lists and hangs up the core's live calls; ``source()`` is what the API is given."""

    def __init__(
        self,
        core: SwitchCore,
        media: MediaManager,
        bridge: Callable[[], CallBridge | None],
        monotonic: Callable[[], float],
        wall: Callable[[float], datetime],
        transmit: Callable[[], None],
    ) -> None:
        self._core = core
        self._media = media
        self._bridge = bridge  # set once the database is open: looked up on each use
        self._monotonic = monotonic
        self._wall = wall
        self._transmit = transmit

    def source(self) -> LiveSource:
        return LiveSource(calls=self.calls, hang_up=self.hang_up)

    def calls(self) -> list[dict[str, Any]]:
        now = self._monotonic()
        return [v for c in list(self._core.calls.values()) if (v := self._view(c, now))]

    def hang_up(self, call_id: str) -> dict[str, Any] | None:
        call = self._core.calls.get(call_id)
        if call is None:
            return None
        now = self._monotonic()
        view = self._view(call, now)
        if not self._core.hang_up(call_id, now):
            return None
        self._transmit()  # the BYEs (or the 480 and CANCEL) leave now
        return view

    def _view(self, call: Call, now: float) -> dict[str, Any] | None:
        state = _STATES.get(call.state)
        if state is None:
            return None
        att = call.attempt
        index = att.index if att is not None else None
        bridge = self._bridge()
        answered = call.answered
        counters = self._media.counters(call.call_id) or _NO_MEDIA
        return {
            "call_id": call.call_id,
            "a_call_id": call.a_invite.call_id,
            "trunk_id": call.trunk_id or None,
            "source": call.source,
            "caller": call.caller,
            "called": call.called,
            "campaign_id": None,
            "buyer_id": None,
            # Routing's view: E.164 numbers as the CDR will hold them, campaign and buyer.
            **(bridge.live(call.call_id, index) if bridge is not None else {}),
            "endpoint": att.uri if att is not None else None,
            "state": state,
            "received_at": self._wall(call.received),
            "answered_at": self._wall(answered) if answered is not None else None,
            "duration_ms": max(0, int((now - answered) * 1000)) if answered is not None else 0,
            "attempts": call.attempts,
            **counters,
        }
