"""How long to wait and how often to repeat, as functions of the mesh size ``n``.

The formulas are memberlist's (``util.go``), from SWIM and Lifeguard:

* ``suspicion_min_s``: SWIM's suspicion timeout, ``mult * max(1, log10(n)) * interval``.
  Lifeguard (section 4.2) starts the timer at ``max = max_mult * min`` and shrinks it
  toward ``min`` as independent confirmations arrive (``remaining_suspicion_s``).
* ``retransmit_limit``: how many times each member sends a piece of news,
  ``mult * ceil(log10(n + 1))`` (SWIM section 4.1: O(log n) rounds reach everyone whp).
* ``sync_interval_s``: push-pull gets rarer past 32 members so its cost per member
  does not grow with n: ``interval * (ceil(log2(n) - log2(32)) + 1)``.
* ``Awareness``: Lifeguard's local health multiplier (section 4.1). A peer that misses
  acks, or is itself suspected, stretches its own probe interval and timeout instead of
  accusing healthy members of its own slowness.
"""

from __future__ import annotations

import math

PUSH_PULL_SCALE_THRESHOLD = 32


def suspicion_min_s(mult: float, n: int, probe_interval_s: float) -> float:
    return mult * max(1.0, math.log10(max(1, n))) * probe_interval_s


def remaining_suspicion_s(confirmations: int, k: int, elapsed_s: float, min_s: float, max_s: float) -> float:
    """Time left before a suspect is declared dead (may be negative: fire now).

    With no confirmations the timeout is ``max_s``; with ``k`` it is ``min_s``; in
    between it falls off logarithmically (Lifeguard section 4.2).
    """
    if k <= 0:
        timeout = min_s
    else:
        frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
        timeout = max(min_s, max_s - frac * (max_s - min_s))
    return timeout - elapsed_s


def retransmit_limit(mult: int, n: int) -> int:
    return mult * math.ceil(math.log10(n + 1))


def sync_interval_s(interval_s: float, n: int) -> float:
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval_s
    return interval_s * (math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1)


class Awareness:
    """Lifeguard's local health score, 0 (healthy) .. ``max_score - 1``."""

    def __init__(self, max_score: int) -> None:
        self.max_score = max_score
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max_score - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        return seconds * (self.score + 1)
