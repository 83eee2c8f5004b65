"""The routing layer's one frozen configuration, with named presets.

Units are in the field names. Every part of ``mesh.routing`` takes this one object:
scoring (``score``), the choice (``choice``), breakers (``breaker``), retries
(``retry``), the escalation ladder (``escalation``) and session affinity (``affinity``).

``lan()`` is the default for a real mesh. ``for_tests()`` keeps the same rules with
short cool-downs and back-offs, so tests that drive a manual clock stay readable.
The shell turns on the cloud rung with ``replace(cfg, cloud_enabled=True)`` when the
peer has a cloud endpoint configured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RoutingConfig:
    # Scoring (see mesh.routing.score)
    unknown_tokens_per_s: float = 5.0  # a model not yet measured (0 tok/s) is assumed this slow
    unknown_rtt_s: float = 0.05  # a remote peer with no measured RTT
    queued_request_tokens: int = 384  # tokens of one request ahead of ours (its size is not gossiped)
    last_resort_penalty_s: float = 60.0  # added to battery, heavily loaded and suspect peers
    heavy_load_fraction: float = 0.75  # (running+waiting+reserved)/(parallel+queue_limit) at or above: heavy

    # Choice (see mesh.routing.choice)
    p2c_pool: int = 4  # power of two choices samples among this many best-scoring peers

    # Circuit breakers (see mesh.routing.breaker)
    breaker_failures: int = 3  # consecutive failures that open a closed breaker
    breaker_window: int = 20  # recent outcomes kept per peer for the failure rate
    breaker_min_samples: int = 10  # outcomes needed before the failure rate can open a breaker
    breaker_failure_rate: float = 0.5  # failures/outcomes in the window at or above: open
    breaker_open_s: float = 5.0  # first cool-down; doubles each time it re-opens without closing
    breaker_open_max_s: float = 300.0  # cap on the cool-down
    breaker_trial_timeout_s: float = 60.0  # a half-open trial that never reports frees its slot after this
    breaker_max_peers: int = 1024  # breaker entries kept; the least recently updated is evicted

    # Retries (see mesh.routing.retry)
    max_retries: int = 2  # attempts on other peers after the first one fails
    retry_backoff_s: float = 0.1  # back-off before the first retry; doubles per retry
    retry_backoff_max_s: float = 2.0  # cap on one back-off
    retry_jitter: float = 0.5  # fraction of each back-off drawn at random (0: none, 1: full jitter)

    # Escalation (see mesh.routing.escalation)
    cloud_enabled: bool = False  # this peer has a cloud endpoint configured
    cloud_features: frozenset[str] = frozenset()  # request options the cloud backend honours (none: OpenAIBackend)
    max_steps: int = 4  # rungs of the ladder one prompt may take, the first included

    # Session affinity (see mesh.routing.affinity)
    max_sessions: int = 4096  # session ids remembered; the least recently used is forgotten

    def __post_init__(self) -> None:
        if self.unknown_tokens_per_s <= 0 or self.unknown_rtt_s < 0 or self.queued_request_tokens < 0:
            raise ValueError("unknown_tokens_per_s must be > 0, unknown_rtt_s and queued_request_tokens >= 0")
        if self.last_resort_penalty_s < 0 or not 0 < self.heavy_load_fraction <= 1:
            raise ValueError("last_resort_penalty_s must be >= 0 and heavy_load_fraction in (0, 1]")
        if self.p2c_pool < 2:
            raise ValueError("p2c_pool must be >= 2")
        if self.breaker_failures < 1 or self.breaker_window < 1 or not 1 <= self.breaker_min_samples <= self.breaker_window:
            raise ValueError("breaker_failures, breaker_window >= 1 and breaker_min_samples in 1..breaker_window")
        if not 0 < self.breaker_failure_rate <= 1:
            raise ValueError("breaker_failure_rate must be in (0, 1]")
        if not 0 < self.breaker_open_s <= self.breaker_open_max_s or self.breaker_trial_timeout_s <= 0:
            raise ValueError("need 0 < breaker_open_s <= breaker_open_max_s and breaker_trial_timeout_s > 0")
        if self.breaker_max_peers < 1 or self.max_sessions < 1:
            raise ValueError("breaker_max_peers and max_sessions must be >= 1")
        if self.max_retries < 0 or not 0 <= self.retry_backoff_s <= self.retry_backoff_max_s:
            raise ValueError("max_retries >= 0 and 0 <= retry_backoff_s <= retry_backoff_max_s")
        if not 0 <= self.retry_jitter <= 1:
            raise ValueError("retry_jitter must be in [0, 1]")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")

    @classmethod
    def lan(cls) -> RoutingConfig:
        return cls()

    @classmethod
    def for_tests(cls) -> RoutingConfig:
        """The LAN rules with cool-downs and back-offs ten times shorter."""
        c = cls.lan()
        return replace(
            c,
            breaker_open_s=c.breaker_open_s / 10,
            breaker_open_max_s=c.breaker_open_max_s / 10,
            breaker_trial_timeout_s=c.breaker_trial_timeout_s / 10,
            retry_backoff_s=c.retry_backoff_s / 10,
            retry_backoff_max_s=c.retry_backoff_max_s / 10,
        )
