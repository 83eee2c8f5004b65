"""``Candidate``: one model on one live peer, as routing sees it.

A peer serving several models gives one candidate per model. Candidates are frozen
snapshots built from gossip (``mesh.routing.members.candidates_from_members``); nothing
here is trusted beyond the owner's signature on its meta, so every field was bounded
when it was read.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIVE = "alive"
SUSPECT = "suspect"
LIVE_STATUSES = (ALIVE, SUSPECT)  # mesh.gossip Status values a candidate may have


@dataclass(frozen=True, slots=True)
class Candidate:
    peer_id: str  # peer id text (lower-case base32)
    name: str  # the peer's name, for people
    model: str  # model name as the peer declares it
    parameters: int  # parameter count (0 when unknown)
    context_length: int  # tokens
    tokens_per_s: float  # measured decode speed for this model on that peer (0.0: not measured)
    running: int  # generations under way (gossiped load)
    waiting: int  # requests queued behind them
    parallel: int  # generations the peer runs at once (>= 1)
    queue_limit: int  # requests that may wait beyond `parallel` before the peer says busy
    rtt_s: float | None  # measured round trip to the peer (0 for this peer; None: unknown)
    on_battery: bool  # the peer runs on battery (unknown counts as mains)
    is_local: bool  # this candidate is on this peer
    status: str = ALIVE  # "alive" or "suspect" (mesh.gossip Status value)
    tier: int | None = None  # peer-declared strength tier of the model (higher: stronger)
    load_s: float = 0.0  # seconds until the model is loaded there (0: loaded; a cold model on disk: its load)
    features: frozenset[str] = frozenset()  # request options its engine honours (stop, logprobs, grammar)

    @property
    def capacity(self) -> int:
        """Requests the peer accepts at once before it says busy."""
        return self.parallel + self.queue_limit

    @property
    def strength(self) -> tuple[int, int]:
        """Order of model strength for escalation: declared tier first (undeclared: 0),
        then parameter count."""
        return (self.tier if self.tier is not None else 0, self.parameters)
