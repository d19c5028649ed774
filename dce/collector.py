"""The garbage collector's setting in a switch process (``dce run``), shared with the benches
that time code the switch runs, so that they see the pauses it would.

Everything allocated at start-up lives as long as the process: :func:`settle` collects once and
freezes it, so no collection walks it again. With it frozen and full collections rare, total
collector CPU hardly depends on the young thresholds (each object is walked once per
generation), but a pause grows with them. And the thresholds count allocations net of
deallocations: with calls ending as fast as they start, the young generations grow to whatever
was born since the last collection and still lives (transactions, 32 s). A gen1 collection
every second (:func:`collect_young`) bounds that. With 10,000 calls up and 20,000 more set up
and torn down (issue 13, ``bench/bench_memory.py --app --churn 20000``): longest pause 3.3 to
4.8 ms at (300, 5) with it; 15 ms at (300, 5) and 24-50 ms at (1,000, 10) without. 3,333 keeps
full collections, which walk every live call (~150 ms at 10,000), rare: 3,333 gen1 collections
apart, 5M net allocations as at (5,000, 10, 100) or 55 min of the timer's, whichever comes
first.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Final

__all__ = ["THRESHOLDS", "YOUNG_EVERY_S", "collect_young", "settle"]

THRESHOLDS: Final = (300, 5, 3_333)
YOUNG_EVERY_S: Final = 1.0


def settle() -> None:
    """After start-up: collect, freeze what lives, set the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


async def collect_young() -> None:
    """Run for the life of the process: a gen1 collection every YOUNG_EVERY_S."""
    while True:
        await asyncio.sleep(YOUNG_EVERY_S)
        gc.collect(1)
