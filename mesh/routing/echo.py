"""Our own requests in a member's gossiped load: the echo, taken out before scoring.

A member's load (running, waiting) reaches this peer by gossip a moment after it is true.
When this peer has just sent that member a request, or one it sent has just finished, the
gossiped value can still count it: a request that finished half a second ago still
shows as running, and the member looks busy to exactly the peer that made it busy. With
one request at a time, that sent every second prompt to the slower peer.

The rule: the value this peer holds was learned at ``heard_at`` (its own clock). Requests
this peer sent there that had started before ``heard_at`` and were still running at
``heard_at`` are counted in it: that is the echo. Those still running are counted again
by the router's reservations, and those that finished since are not there any more; so
the echo is taken out of the gossiped value (from running, then waiting), and the
reservations add back what still runs. Requests started after ``heard_at`` are not in
the value; the reservations count them.

Pure: times are passed in; ``SentLog`` keeps, per member, the start and end of the
requests sent there (bounded: the newest ``max_per_peer``, and none that ended more than
``keep_s`` ago).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from mesh.routing.candidate import Candidate


@dataclass
class _Sent:
    start: float
    end: float | None = None


class SentLog:
    def __init__(self, *, max_per_peer: int = 256, keep_s: float = 30.0) -> None:
        self.max_per_peer = max_per_peer
        self.keep_s = keep_s
        self._by_peer: dict[str, deque[_Sent]] = {}

    def started(self, peer: str, now: float) -> _Sent:
        log = self._by_peer.setdefault(peer, deque(maxlen=self.max_per_peer))
        entry = _Sent(now)
        log.append(entry)
        return entry

    @staticmethod
    def ended(entry: _Sent, now: float) -> None:
        entry.end = now

    def echo(self, peer: str, heard_at: float, now: float) -> int:
        """How many of our requests the value learned at ``heard_at`` counts."""
        log = self._by_peer.get(peer)
        if not log:
            return 0
        while log and log[0].end is not None and now - log[0].end > self.keep_s:
            log.popleft()
        if not log:
            del self._by_peer[peer]
            return 0
        return sum(1 for s in log if s.start < heard_at and (s.end is None or s.end > heard_at))


def without_echo(c: Candidate, echo: int) -> Candidate:
    """``c`` with ``echo`` of its gossiped requests taken out (running first, then waiting)."""
    if echo <= 0 or (c.running == 0 and c.waiting == 0):
        return c
    running = max(0, c.running - echo)
    waiting = max(0, c.waiting - max(0, echo - c.running))
    return replace(c, running=running, waiting=waiting)
