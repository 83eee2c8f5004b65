"""Fit: can this candidate serve this request at all, and is it taking requests now?

Two separate questions, because their answers lead the caller to different places
(``mesh.routing.choice`` reports "no fit model" and "all busy" apart):

* ``unfit_reason`` -- the candidate is live, its context holds the prompt plus the
  answer budget, it matches every pin and minimum of the request, and its engine honours
  every option the request uses (``needs``: stop sequences, logprobs, a grammar). ``None`` means
  it fits; otherwise a short reason for people.
* ``is_busy`` -- the peer's bounded queue is full: gossiped ``running + waiting``, plus
  the requests this peer has in flight to it and not yet seen in gossip
  (``reservations``), reach ``parallel + queue_limit``. Such a peer would refuse the
  request at once (``BackendBusy``), so it is not offered.
"""

from __future__ import annotations

from collections.abc import Mapping

from mesh.routing.candidate import LIVE_STATUSES, Candidate
from mesh.routing.request import RouteRequest

NOT_LIVE = "not live"
PEER_PIN = "not the pinned peer"
MODEL_PIN = "not the pinned model"
CONTEXT = "context too short"
TIER = "tier below the minimum"
PARAMETERS = "fewer parameters than the minimum"
FEATURES = "its engine cannot honour the request's options"


def unfit_reason(c: Candidate, request: RouteRequest, *, pins: bool = True) -> str | None:
    """Why ``c`` cannot serve ``request`` (``None``: it fits).

    ``pins=False`` ignores ``pinned_peer`` and ``pinned_model`` (the escalation ladder
    looks past the pins of the first rung); minimums always apply."""
    if c.status not in LIVE_STATUSES:
        return NOT_LIVE
    if pins and request.pinned_peer is not None and c.peer_id != request.pinned_peer:
        return PEER_PIN
    if pins and request.pinned_model is not None and c.model.casefold() != request.pinned_model.casefold():
        return MODEL_PIN
    if c.context_length < request.total_tokens:
        return CONTEXT
    if request.min_tier is not None and (c.tier is None or c.tier < request.min_tier):
        return TIER
    if request.min_parameters is not None and c.parameters < request.min_parameters:
        return PARAMETERS
    if not request.needs <= c.features:
        return FEATURES
    return None


def reserved_on(reservations: Mapping[str, int], peer_id: str) -> int:
    """This peer's in-flight requests to ``peer_id`` (never negative)."""
    return max(0, int(reservations.get(peer_id, 0)))


def queue_ahead(c: Candidate, reservations: Mapping[str, int]) -> int:
    """Requests ahead of a new one on that peer: gossiped running + waiting, plus ours in
    flight there. Ours may already be counted in gossip too; erring high only spreads
    load further."""
    return c.running + c.waiting + reserved_on(reservations, c.peer_id)


def is_busy(c: Candidate, reservations: Mapping[str, int]) -> bool:
    """The peer's bounded queue is full (it would answer busy at once)."""
    return queue_ahead(c, reservations) >= c.capacity
