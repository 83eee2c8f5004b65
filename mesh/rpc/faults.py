"""A seeded fault layer under the gossip transport, for tests and benchmarks.

The kernels here have no ``tc netem`` and the machines no iptables, so message loss and
delay are made here instead, the way memberlist's mock transport does it: each outgoing
gossip datagram is dropped with probability ``loss`` and otherwise held for ``delay_s``
(plus up to ``jitter_s``), decided by a seeded RNG so a run can be repeated. Off unless
``mesh-peer --fault-loss/--fault-delay-ms`` (testing flags) switch it on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class FaultConfig:
    loss: float = 0.0  # probability in [0, 1) that a datagram is dropped
    delay_s: float = 0.0  # added to every datagram that is not dropped
    jitter_s: float = 0.0  # up to this much more, uniformly
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay and jitter cannot be negative")

    @property
    def active(self) -> bool:
        return self.loss > 0 or self.delay_s > 0 or self.jitter_s > 0


class FaultInjector:
    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)
        self.dropped = 0
        self.passed = 0

    def decide(self) -> float | None:
        """None: drop this datagram; otherwise the delay in seconds to send it after."""
        if self.cfg.loss and self._rng.random() < self.cfg.loss:
            self.dropped += 1
            return None
        self.passed += 1
        return self.cfg.delay_s + (self._rng.uniform(0, self.cfg.jitter_s) if self.cfg.jitter_s else 0.0)
