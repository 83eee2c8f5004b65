"""Task helpers shared by every long-running part of a peer: cancelling a task and
waiting for it, waiting on an event with a timeout, and ``Background`` (one part's
tasks in one ``asyncio.TaskGroup``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


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


class Background:
    """The background work of one long-running part (a service's loops and the one-off
    sends it fires), held in one ``asyncio.TaskGroup`` from ``start`` to ``close``.

    Structured: nothing outlives ``close`` (it cancels the group, which cancels and
    awaits every task in it), and a loop that dies of an unexpected error takes the
    part down visibly (logged, ``failed`` set) instead of vanishing while the rest runs
    on. One-off tasks (``spawn``) are shielded from that: their errors are logged and
    counted, never fatal, since a send that fails is routine."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed: BaseException | None = None
        self.spawn_errors = 0
        self.loops: dict[str, asyncio.Task] = {}  # the tasks ``start`` made, by name
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._group is not None and not self._closing

    async def start(self, **loops: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run each of ``loops`` (name -> coroutine function) until ``close``."""
        if self._runner is not None:
            raise RuntimeError(f"{self.name} started twice")
        ready = asyncio.Event()

        async def hold() -> None:
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    for name, loop in loops.items():
                        self.loops[name] = group.create_task(loop(), name=f"{self.name}-{name}")
                    ready.set()
                    await asyncio.Event().wait()  # until close() cancels the group
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # a loop died: the part is down; say so
                self.failed = e
                log.error("%s stopped: a background task failed: %r", self.name, e)
            finally:
                self._group = None
                ready.set()

        self._runner = asyncio.create_task(hold(), name=self.name)
        await ready.wait()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task | None:
        """Run a one-off task inside the group; None (and ``coro`` closed) once closing."""
        if not self.running:
            coro.close()
            return None
        return self._group.create_task(self._contained(coro), name=name)

    async def _contained(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.spawn_errors += 1
            log.warning("%s: a background task failed: %r", self.name, e)
            return None

    async def close(self) -> None:
        """Cancel every task and wait until all have ended."""
        self._closing = True
        await cancel_and_wait(self._runner)
        self._runner = None
