"""A clock that moves only when told to: time-dependent policy and whole peers run
without sleeping (see ``mesh.clock``)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """A ``mesh.clock.Clock`` whose time moves only by ``advance(s)`` (or ``run``).

    Callable like ``time.time``. ``sleep`` and ``wait`` end when the clock has been
    advanced past their deadline, never on their own."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return event.is_set()

    async def run(self, seconds: float, *, step_s: float = 0.01, real_pause_s: float = 0.0005) -> None:
        """Let ``seconds`` of virtual time pass in steps of ``step_s``, giving the event loop
        ``real_pause_s`` of real time per step for real I/O (sockets) to complete."""
        end = self.now + seconds
        while self.now < end:
            self.advance(min(step_s, end - self.now))
            await asyncio.sleep(real_pause_s)
