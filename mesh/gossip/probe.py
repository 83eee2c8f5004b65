"""Probe bookkeeping: the probe in flight, the relays we run for others, the probe order.

SWIM section 3.1: each protocol period, ping one member; if no ack within the probe
timeout, ask ``indirect_checks`` others to ping it (ping-req) and forward any ack; if no
ack at all by the end of the period, suspect it. Lifeguard section 4.1: relays answer
with a nack when the target stays silent, so a prober that hears neither acks nor nacks
learns the trouble is likely its own (``Awareness``).

SWIM section 4.3: targets are chosen in randomized round-robin order, so every member
is probed once per round of ``n - 1`` periods (bounded detection time) and the order
is reshuffled each round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Probe:
    target: bytes
    seq: int
    timeout_at: float  # send ping-reqs if no ack by then
    period_end: float  # suspect if no ack (direct or relayed) by then
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class Relay:
    """A ping-req we are serving: our ping's ack is forwarded as an ack of ``requester_seq``."""

    requester: bytes
    requester_seq: int
    nack_at: float | None  # send a nack then, unless the target answered (None: no nack wanted)
    expires_at: float  # forget it then (late acks are still forwarded until this)


class ProbeOrder:
    def __init__(self) -> None:
        self._order: list[bytes] = []
        self._i = 0

    def next(self, candidates: list[bytes], is_probeable, rng: random.Random) -> bytes | None:
        """The next probeable member, reshuffling ``candidates`` when a round ends."""
        for _ in range(2):
            while self._i < len(self._order):
                pid = self._order[self._i]
                self._i += 1
                if is_probeable(pid):
                    return pid
            self._order = list(candidates)
            rng.shuffle(self._order)
            self._i = 0
        return None

    def probe_next(self, peer_id: bytes) -> None:
        """Probe ``peer_id`` next (a member just suspected by someone else: our own probe
        is an independent confirmation if it is dead, and costs one ping if not)."""
        if self._i < len(self._order) and self._order[self._i] == peer_id:
            return
        self._order.insert(self._i, peer_id)

    def add(self, peer_id: bytes, rng: random.Random) -> None:
        """A new member joins this round at a random not-yet-probed position."""
        pos = rng.randint(self._i, len(self._order))
        self._order.insert(pos, peer_id)
