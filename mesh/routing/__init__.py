"""Routing: which peer answers a prompt, what to do when it fails or is unsure.

The pure core (no sockets, threads, clocks or global randomness: ``now`` and ``rng``
are passed in). Modules, one noun each:

* ``config``      ``RoutingConfig`` with ``lan()`` and ``for_tests()`` presets
* ``request``     ``RouteRequest``: what routing needs to know about a prompt
* ``candidate``   ``Candidate``: one model on one live peer
* ``members``     ``candidates_from_members``: candidates from ``Membership.view()``, validated
* ``fit``         can a candidate serve the request; is its queue full
* ``score``       expected seconds to a complete answer, last-resort penalty
* ``decision``    ``RouteDecision`` and ``RouteReason``
* ``choice``      ``choose_route``: pin, sticky session, power of two choices
* ``breaker``     ``BreakerBook``: a circuit breaker per peer
* ``retry``       ``retry_plan``: the next peer and the back-off
* ``escalation``  ``next_step``: the ladder mesh -> stronger model -> cloud -> stop
* ``affinity``    ``SessionAffinity``: bounded LRU session id -> peer

The shell: ``router`` (``Router``) calls peers over RPC (or this peer's own backend, or
the cloud), owns the reservations counter, reads the clock once per decision, and feeds
outcomes back into the breakers and affinity. ``successors`` follows members that
rotated their keys.
"""

from mesh.routing.affinity import SessionAffinity
from mesh.routing.breaker import BreakerBook, BreakerState
from mesh.routing.candidate import Candidate
from mesh.routing.choice import choose_route
from mesh.routing.config import RoutingConfig
from mesh.routing.decision import RouteDecision, RouteReason
from mesh.routing.escalation import Attempt, EscalationStep, StepKind, best_answer, next_step
from mesh.routing.fit import is_busy, unfit_reason
from mesh.routing.members import CandidateList, candidates_from_members
from mesh.routing.request import RouteRequest, estimate_prompt_tokens
from mesh.routing.retry import backoff_s, retry_plan
from mesh.routing.score import expected_s, is_last_resort, score

__all__ = [
    "Attempt",
    "BreakerBook",
    "BreakerState",
    "Candidate",
    "CandidateList",
    "EscalationStep",
    "RouteDecision",
    "RouteReason",
    "RouteRequest",
    "RoutingConfig",
    "SessionAffinity",
    "StepKind",
    "backoff_s",
    "best_answer",
    "candidates_from_members",
    "choose_route",
    "estimate_prompt_tokens",
    "expected_s",
    "is_busy",
    "is_last_resort",
    "next_step",
    "retry_plan",
    "score",
    "unfit_reason",
]
