"""Retries on other peers: which peer next, and how long to back off first.

``retry_plan(decision, attempt, *, cfg, rng)`` after ``attempt`` failed attempts
(1 = the chosen peer failed) returns ``(decision.fallbacks[attempt - 1], backoff_s)``,
or ``(None, 0.0)`` when retries are spent: at most ``cfg.max_retries`` retries, never
more than the fallbacks, never back to a peer already tried (the fallbacks are distinct
peers other than the chosen one).

Back-off: ``b = min(retry_backoff_max_s, retry_backoff_s * 2**(attempt - 1))``, of which
a fraction ``retry_jitter`` is drawn at random: ``b * (1 - j) + rng.uniform(0, b * j)``
("equal jitter" at j = 0.5, see the AWS Architecture Blog, "Exponential Backoff and
Jitter"), so callers that failed together do not retry together.

The shell re-checks the returned peer's breaker (``BreakerBook.on_attempt``) and, if it
refuses, asks for ``attempt + 1`` at once. A pinned decision has no fallbacks, so a pin
is never retried elsewhere.
"""

from __future__ import annotations

import random

from mesh.routing.candidate import Candidate
from mesh.routing.config import RoutingConfig
from mesh.routing.decision import RouteDecision


def backoff_s(attempt: int, *, cfg: RoutingConfig, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (>= 1), jittered."""
    b = min(cfg.retry_backoff_max_s, cfg.retry_backoff_s * 2 ** min(attempt - 1, 62))
    j = cfg.retry_jitter
    return b * (1 - j) + rng.uniform(0, b * j)


def retry_plan(
    decision: RouteDecision, attempt: int, *, cfg: RoutingConfig, rng: random.Random
) -> tuple[Candidate | None, float]:
    """The peer to retry on after ``attempt`` failures, and the back-off before it."""
    if attempt < 1 or attempt > cfg.max_retries or attempt > len(decision.fallbacks):
        return None, 0.0
    return decision.fallbacks[attempt - 1], backoff_s(attempt, cfg=cfg, rng=rng)
