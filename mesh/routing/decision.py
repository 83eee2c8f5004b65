"""``RouteDecision``: what ``choose_route`` decided, and why, in one frozen value.

A decision with a ``chosen`` candidate also names the runner-up it beat (for the answer's
"why this peer" line) and the ordered ``fallbacks`` for retries on other peers
(``mesh.routing.retry``). A decision without one says why (``reason`` and a ``detail``
for people) so the caller can escalate (``mesh.routing.escalation``) or queue the job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mesh.routing.candidate import Candidate


class RouteReason(enum.StrEnum):
    # a peer was chosen
    PINNED = "pinned"  # the request named the peer
    STICKY = "sticky"  # the session's peer is still a healthy fit
    P2C = "p2c"  # the better of two sampled from the best-scoring pool
    BEST = "best score"  # the pool held one preferred peer (others are last resort)
    ONLY = "only candidate"  # one peer could take it
    # none was
    NO_FIT = "no fit model"  # no live peer has a model that fits (context, pins, minimums)
    ALL_BUSY = "all busy"  # every fit peer's queue is full
    ALL_OPEN = "all open breakers"  # every fit peer's breaker is open
    UNAVAILABLE = "all busy or open breakers"  # some of each

    @property
    def routed(self) -> bool:
        return self in _ROUTED


_ROUTED = frozenset({RouteReason.PINNED, RouteReason.STICKY, RouteReason.P2C, RouteReason.BEST, RouteReason.ONLY})


@dataclass(frozen=True, slots=True)
class RouteDecision:
    reason: RouteReason
    chosen: Candidate | None = None
    score: float | None = None  # chosen's expected seconds (mesh.routing.score), penalty included
    runner_up: Candidate | None = None  # p2c: the other sampled peer; else the best other peer
    runner_up_score: float | None = None
    fallbacks: tuple[Candidate, ...] = ()  # other peers to retry on, best first (none when pinned)
    detail: str = ""  # for people: why no route, or how the choice was made
    unfit: int = 0  # candidates (peer, model) that do not fit the request
    busy: int = 0  # fit peers whose queue is full
    open: int = 0  # fit peers whose breaker does not allow a request now

    @property
    def ok(self) -> bool:
        return self.chosen is not None
