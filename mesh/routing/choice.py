"""``choose_route``: which peer answers a request. A pure function of its inputs.

In order:

1. Fit (``mesh.routing.fit.unfit_reason``): live candidates whose model fits the
   request's context, pins and minimums. None -> ``NO_FIT``.
2. Available: the peer's breaker allows a request at ``now`` and its queue, counting
   our ``reservations``, is not full. None -> ``ALL_OPEN`` / ``ALL_BUSY`` /
   ``UNAVAILABLE``, so the caller escalates or queues.
3. Each available peer is represented by its best-scoring fit model
   (``mesh.routing.score``); peers are ranked by ``(score, peer_id)``.
4. Pinned peer -> that peer (``PINNED``), no fallbacks: a pin is not retried elsewhere.
5. Sticky: the session's remembered peer (``affinity``) while it stays healthy -- alive
   (not suspect), breaker closed, not busy, fit, and not a last-resort peer unless the
   best-ranked peer is one too -> ``STICKY``. Otherwise the session is routed afresh.
6. One peer -> ``ONLY``.
7. Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
   Balancing", 2001): the pool is the ``cfg.p2c_pool`` best-ranked preferred peers
   (last-resort peers join only when the best-ranked peer is itself last resort, i.e.
   no preferred peer can serve in time); two distinct members are sampled with ``rng``
   and the better by ``(score, peer_id)`` wins (``P2C``), the other is the runner-up.
   A pool of one is taken as is (``BEST``). Sampling among the best rather than taking
   the best keeps many routers with the same stale view from all picking one peer.

Fallbacks are every other available peer, best first. Nothing here reads a clock or
global randomness; ``affinity`` and ``breakers`` are only read.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.routing.affinity import SessionAffinity
from mesh.routing.breaker import BreakerBook, BreakerState
from mesh.routing.candidate import ALIVE, Candidate
from mesh.routing.config import RoutingConfig
from mesh.routing.decision import RouteDecision, RouteReason
from mesh.routing.fit import FEATURES, queue_ahead, unfit_reason
from mesh.routing.request import RouteRequest
from mesh.routing.score import expected_at, last_resort_at


@dataclass(frozen=True, slots=True)
class _Ranked:
    score: float
    peer_id: str
    candidate: Candidate
    last_resort: bool

    @property
    def key(self) -> tuple[float, str]:
        return (self.score, self.peer_id)


def choose_route(
    request: RouteRequest,
    candidates: Iterable[Candidate],
    *,
    reservations: Mapping[str, int],
    affinity: SessionAffinity | None,
    breakers: BreakerBook | None,
    now: float,
    rng: random.Random,
    cfg: RoutingConfig,
) -> RouteDecision:
    """Choose the peer for ``request`` (see the module docstring for the rules)."""
    unfit: Counter[str] = Counter()
    fit: list[Candidate] = []
    for c in candidates:
        why = unfit_reason(c, request)
        if why is None:
            fit.append(c)
        else:
            unfit[why] += 1
    n_unfit = sum(unfit.values())
    if not fit:
        return RouteDecision(RouteReason.NO_FIT, detail=_no_fit_detail(request, unfit), unfit=n_unfit)

    # best fit model per available peer
    best: dict[str, _Ranked] = {}
    busy_peers: set[str] = set()
    open_peers: set[str] = set()
    for c in fit:
        if breakers is not None and not breakers.allows(c.peer_id, now=now):
            open_peers.add(c.peer_id)
            continue
        ahead = queue_ahead(c, reservations)
        if ahead >= c.capacity:  # fit.is_busy
            busy_peers.add(c.peer_id)
            continue
        last_resort = last_resort_at(c, ahead, cfg)
        s = expected_at(c, request, ahead, cfg) + (cfg.last_resort_penalty_s if last_resort else 0.0)  # score.score
        r = _Ranked(s, c.peer_id, c, last_resort)
        held = best.get(c.peer_id)
        if held is None or (r.score, c.model) < (held.score, held.candidate.model):
            best[c.peer_id] = r
    if not best:
        if busy_peers and open_peers:
            reason = RouteReason.UNAVAILABLE
        else:
            reason = RouteReason.ALL_OPEN if open_peers else RouteReason.ALL_BUSY
        detail = f"{len(busy_peers)} fit peer(s) busy, {len(open_peers)} with an open breaker"
        return RouteDecision(reason, detail=detail, unfit=n_unfit, busy=len(busy_peers), open=len(open_peers))

    ranked = sorted(best.values(), key=lambda r: r.key)
    counts = {"unfit": n_unfit, "busy": len(busy_peers), "open": len(open_peers)}

    if request.pinned_peer is not None:  # fit kept only the pinned peer's models
        return _decide(RouteReason.PINNED, ranked[0], None, (), "the request named this peer", counts)

    sticky = _sticky(request, ranked, affinity, breakers, now)
    if sticky is not None:
        others = [r for r in ranked if r is not sticky]
        return _decide(RouteReason.STICKY, sticky, others[0] if others else None, others,
                       f"session {request.session_id} stays on its peer", counts)

    if len(ranked) == 1:
        return _decide(RouteReason.ONLY, ranked[0], None, (), "one peer can take it", counts)

    preferred = [r for r in ranked if not r.last_resort]
    pool = (ranked if ranked[0].last_resort else preferred)[: cfg.p2c_pool]
    if len(pool) == 1:
        chosen, runner = pool[0], ranked[1]
        reason, detail = RouteReason.BEST, "the only preferred peer; the others are last resort"
    else:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        chosen, runner = (a, b) if a.key <= b.key else (b, a)
        reason, detail = RouteReason.P2C, f"better of two sampled from the best {len(pool)}"
    return _decide(reason, chosen, runner, [r for r in ranked if r is not chosen], detail, counts)


def _sticky(request, ranked, affinity, breakers, now) -> _Ranked | None:
    if affinity is None or request.session_id is None:
        return None
    peer_id = affinity.get(request.session_id)
    if peer_id is None:
        return None
    for r in ranked:
        if r.peer_id != peer_id:
            continue
        healthy = r.candidate.status == ALIVE and (
            breakers is None or breakers.state(peer_id, now=now) is BreakerState.CLOSED
        )
        if healthy and (not r.last_resort or ranked[0].last_resort):
            return r
        return None
    return None  # not fit, busy, breaker open, or gone


def _decide(reason, chosen: _Ranked, runner: _Ranked | None, others, detail: str, counts) -> RouteDecision:
    return RouteDecision(
        reason,
        chosen=chosen.candidate,
        score=chosen.score,
        runner_up=runner.candidate if runner else None,
        runner_up_score=runner.score if runner else None,
        fallbacks=tuple(r.candidate for r in others),
        detail=detail,
        **counts,
    )


def _no_fit_detail(request: RouteRequest, unfit: Counter[str]) -> str:
    if not unfit:
        return "no live peer offers a model"
    why = ", ".join(f"{reason} ({n})" for reason, n in sorted(unfit.items(), key=lambda kv: (-kv[1], kv[0])))
    uses = f" (the request uses {', '.join(sorted(request.needs))})" if FEATURES in unfit else ""
    return f"no live peer has a model for {request.total_tokens} tokens as asked: {why}{uses}"
