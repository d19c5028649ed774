"""dce/eager.py: coroutines run now when they can, and finish in a Task when they wait."""

from __future__ import annotations

import asyncio

import pytest

from dce.eager import start_eager


async def test_a_coroutine_that_never_waits_finishes_at_once_without_a_task() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    task = start_eager(asyncio.get_running_loop(), quick())
    assert task is None and done == [1]


async def test_a_waiting_coroutine_sees_results_exceptions_and_sleeps() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    bad: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def waits() -> None:
        seen.append("start")
        seen.append(await fut)
        await asyncio.sleep(0)
        try:
            await bad
        except ValueError as exc:
            seen.append(str(exc))
        await asyncio.sleep(0.01)
        seen.append("end")

    task = start_eager(loop, waits())
    assert task is not None and seen == ["start"]
    fut.set_result(7)
    bad.set_exception(ValueError("boom"))
    await asyncio.wait_for(task, 2)
    assert seen == ["start", 7, "boom", "end"]


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    cleaned: list[str] = []

    async def forever() -> None:
        try:
            await loop.create_future()
        finally:
            cleaned.append("finally")

    task = start_eager(loop, forever())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
