"""Time as every long-running part of a peer sees it: one injected clock.

A ``Clock`` is called for the wall time (``clock()``, seconds since the epoch: what
certificates, job leases and gossip timers compare against), and waits on it
(``sleep``, ``wait``). ``SYSTEM`` is the real one, and the default everywhere. Tests
pass ``mesh.testing.clock.ManualClock``, whose time moves only when the test advances
it, so whole peers run minutes of gossip periods, suspicion timers, leases and
back-offs in a fraction of a second, with the same code.

Waits that are about sockets rather than the protocol (letting a last datagram leave,
polling a drain of calls in flight) stay on real time: there is no virtual network.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

from mesh.rpc.tasks import wait_event


@runtime_checkable
class Clock(Protocol):
    def __call__(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool: ...


class SystemClock:
    """The real clock: ``time.time`` and the event loop's timers."""

    def __call__(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Until ``event`` is set or ``timeout_s`` passes; True if it was set."""
        return await wait_event(event, timeout_s)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM = SystemClock()
