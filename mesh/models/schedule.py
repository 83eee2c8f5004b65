"""``PieceSchedule``: which piece to ask which source for next, in a pull from several peers.

Pure bookkeeping (no I/O, no clock): the puller's workers ask ``next_for(source)`` for a
piece, then report ``done``, ``failed`` (the source did not deliver: a timeout, a lost
link, an error) or ``bad`` (the source delivered bytes that fail the manifest's hash).

- A piece is handed to one source at a time; a piece that failed goes back to the front
  of the queue for any source.
- A source that sends a bad piece is banned for this model at once: it is never asked
  again (``banned``), and what it was given goes back to the queue.
- A source that fails ``max_failures`` times in a row is dropped (``dropped``): a dead
  peer stops being asked; one failure followed by a success resets the count.
- ``finished`` when every piece is done; ``stuck`` when pieces remain but no source is
  left to ask (the caller stops and reports; the pieces done so far are kept).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class PieceSchedule:
    def __init__(self, count: int, *, done: Iterable[int] = (), sources: Iterable[str] = (),
                 max_failures: int = 3) -> None:
        self.count = count
        self.done: set[int] = set(done)
        self.todo: deque[int] = deque(i for i in range(count) if i not in self.done)
        self.in_flight: dict[int, str] = {}
        self.sources: set[str] = set(sources)
        self.banned: set[str] = set()
        self.dropped: set[str] = set()
        self.max_failures = max_failures
        self._failures: dict[str, int] = {}
        self.delivered: dict[str, int] = {}  # source -> pieces it delivered

    def add_source(self, source: str) -> None:
        if source not in self.banned and source not in self.dropped:
            self.sources.add(source)

    def active(self) -> set[str]:
        return self.sources - self.banned - self.dropped

    def next_for(self, source: str) -> int | None:
        """The next piece for ``source`` to send, or None (nothing left, or it may not)."""
        if source not in self.active() or not self.todo:
            return None
        index = self.todo.popleft()
        self.in_flight[index] = source
        return index

    def done_by(self, source: str, index: int) -> None:
        self.in_flight.pop(index, None)
        self.done.add(index)
        self._failures[source] = 0
        self.delivered[source] = self.delivered.get(source, 0) + 1

    def failed(self, source: str, index: int) -> None:
        self._return(index)
        self._failures[source] = self._failures.get(source, 0) + 1
        if self._failures[source] >= self.max_failures:
            self.dropped.add(source)

    def bad(self, source: str, index: int) -> None:
        self._return(index)
        self.banned.add(source)

    def _return(self, index: int) -> None:
        if self.in_flight.pop(index, None) is not None and index not in self.done:
            self.todo.appendleft(index)

    @property
    def finished(self) -> bool:
        return len(self.done) == self.count

    @property
    def stuck(self) -> bool:
        return not self.finished and not self.active()
