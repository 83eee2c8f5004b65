"""Task helpers shared by the RPC server and client."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task this object owns and wait until it has stopped."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True if it was set.

    Not ``asyncio.wait_for(event.wait(), ...)``: on Python 3.11 that swallows a
    cancellation arriving as the event is set (gh-86296), so a loop woken often (the
    gossip tick) can miss its ``cancel()`` and stop only when something else gives up.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
