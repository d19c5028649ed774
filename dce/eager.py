"""Start a coroutine eagerly: run it now, and make a Task only if it really has to wait.

Most calls are decided without awaiting anything (in-process caps, no RTB, bypass media), yet
``loop.create_task`` per call costs a Task object, a scheduling round trip and a WeakSet entry.
:func:`start_eager` steps the coroutine synchronously like Python 3.12's eager task factory;
when it suspends on a future, a Task resumes it exactly as asyncio would (the future's result
or exception is delivered by ``send``/``throw``, cancellation is passed in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_eager(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits; None if it finished, else the Task finishing it."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_resume(coro, yielded))


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive ``coro`` from a suspension point on, as an asyncio Task would."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)  # a bare yield: give the loop one turn
            else:
                # The future coro awaits; awaiting it here too just waits for it to settle.
                # Its outcome reaches coro below, when Future.__await__ reads the result.
                await asyncio.wait([yielded])
        except asyncio.CancelledError as exc:
            if isinstance(yielded, asyncio.Future):
                yielded.cancel()  # as Task.cancel does with the future it waits on
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
