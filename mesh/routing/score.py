"""Scoring: expected seconds until a candidate has sent the complete answer.

``score(c, request, *, reservations, cfg)`` (lower is better)::

    tps      = c.tokens_per_s, or cfg.unknown_tokens_per_s when not measured (0)
    ahead    = c.running + c.waiting + reservations[c.peer_id]        (see fit.queue_ahead)
    wait_s   = ahead / c.parallel * (cfg.queued_request_tokens / tps)
    own_s    = (request.prompt_tokens + request.max_tokens) / tps
    rtt_s    = c.rtt_s, or cfg.unknown_rtt_s when not measured (0 for this peer)
    load_s   = c.load_s: the model is on that peer's disk, not loaded; its load comes first
    score    = load_s + wait_s + own_s + rtt_s + penalty

A cold model's speed is not measured yet either, so it is planned at the pessimistic
``unknown_tokens_per_s``: a warm peer wins unless the cold one is much better.

Queued requests' sizes are not gossiped, so each one ahead counts as a typical request
(``queued_request_tokens``). Counting our own in-flight reservations means a burst
routed between two gossip refreshes spreads out instead of herding onto the peer that
looked idle a second ago.

Last resort (``is_last_resort``): a peer on battery, a suspect peer, or one whose queue
is at least ``heavy_load_fraction`` full gets ``penalty = last_resort_penalty_s``. It is
then chosen only when every other fit candidate's expected time is worse than its own by
more than that margin -- that is, when the others cannot serve in time -- or when no
other candidate is free. (``choice`` also keeps last-resort peers out of the power of
two choices pool while a better-scoring preferred peer exists.)
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.routing.candidate import SUSPECT, Candidate
from mesh.routing.config import RoutingConfig
from mesh.routing.fit import queue_ahead
from mesh.routing.request import RouteRequest


def tokens_per_s(c: Candidate, cfg: RoutingConfig) -> float:
    """The speed to plan with: measured, or the pessimistic default when unmeasured."""
    return c.tokens_per_s if c.tokens_per_s > 0 else cfg.unknown_tokens_per_s


def is_last_resort(c: Candidate, *, reservations: Mapping[str, int], cfg: RoutingConfig) -> bool:
    """On battery, suspect, or heavily loaded (see the module docstring)."""
    return last_resort_at(c, queue_ahead(c, reservations), cfg)


def expected_s(c: Candidate, request: RouteRequest, *, reservations: Mapping[str, int], cfg: RoutingConfig) -> float:
    """Expected seconds to a complete answer, without the last-resort penalty."""
    return expected_at(c, request, queue_ahead(c, reservations), cfg)


def score(c: Candidate, request: RouteRequest, *, reservations: Mapping[str, int], cfg: RoutingConfig) -> float:
    """Expected seconds to a complete answer plus the last-resort penalty (lower wins)."""
    ahead = queue_ahead(c, reservations)
    penalty = cfg.last_resort_penalty_s if last_resort_at(c, ahead, cfg) else 0.0
    return expected_at(c, request, ahead, cfg) + penalty


# The same rules for a known queue length ``ahead`` (choose_route computes it once per
# candidate: 256 members are ranked in well under a millisecond).


def last_resort_at(c: Candidate, ahead: int, cfg: RoutingConfig) -> bool:
    return c.on_battery or c.status == SUSPECT or ahead >= cfg.heavy_load_fraction * c.capacity


def expected_at(c: Candidate, request: RouteRequest, ahead: int, cfg: RoutingConfig) -> float:
    tps = tokens_per_s(c, cfg)
    wait_s = ahead / c.parallel * (cfg.queued_request_tokens / tps)
    own_s = request.total_tokens / tps
    rtt_s = c.rtt_s if c.rtt_s is not None else (0.0 if c.is_local else cfg.unknown_rtt_s)
    return c.load_s + wait_s + own_s + rtt_s
