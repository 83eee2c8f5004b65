"""Admission for backends that run on the event loop: ``parallel`` requests at once, up
to ``queue_limit`` more waiting in FIFO order, ``BackendBusy`` past that.

A finishing request hands its slot straight to the oldest waiter (``running`` never
dips in between, so a newcomer cannot jump the queue). A waiter cancelled while waiting
never runs; one cancelled just as its slot arrived passes the slot on.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from mesh.errors import BackendBusy, Cancelled


class SlotQueue:
    def __init__(self, *, parallel: int, queue_limit: int) -> None:
        self.parallel = parallel
        self.queue_limit = queue_limit
        self.running = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.closed = False

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self, *, what: Callable[[], str] = lambda: "") -> None:
        """Take a slot, waiting in line if needed. ``what()`` names the backend in errors."""
        if self.closed:
            raise Cancelled("the backend is closed")
        if self.running < self.parallel and not self.waiting:
            self.running += 1
            return
        if self.waiting >= self.queue_limit:
            raise BackendBusy(
                f"backend busy: {self.running} {what()}running and {self.waiting} waiting "
                f"(queue limit {self.queue_limit}); try again later or ask another peer"
            )
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over: running already counts us
        except BaseException:
            if fut in self._waiters:
                self._waiters.remove(fut)  # cancelled while waiting: never runs
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # the slot arrived as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    def close(self) -> None:
        """Refuse new requests; every waiter fails with ``Cancelled``."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(Cancelled("the backend closed before this request started"))


def check_fits(
    prompt_tokens: int, max_tokens: int, n_ctx: int, *, about: str = "", where: str = "this model's context"
) -> None:
    """``InvalidRequest`` when prompt + max_tokens cannot fit a context of ``n_ctx`` tokens."""
    from mesh.errors import InvalidRequest

    if prompt_tokens + max_tokens > n_ctx:
        room = n_ctx - prompt_tokens
        hint = f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt"
        raise InvalidRequest(
            f"prompt is {about}{prompt_tokens} tokens and max_tokens is {max_tokens}: together more than "
            f"{where} ({n_ctx} tokens); {hint}"
        )
