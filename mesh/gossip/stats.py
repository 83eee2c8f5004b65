"""Counters of one Swim instance: messages and bytes in and out, refusals, decisions.

Read by ``mesh status``, ``/metrics`` and the simulator's bench. Keys of ``sent`` and
``received`` are message type names; of ``rejected``, ``GossipReason`` values; of
``events``: refuted, suspected, confirmed, declared_dead, reclaimed, corrected,
introduced, stale_ack, relay_full, probe_failed.
"""

from __future__ import annotations

from collections import Counter


class GossipStats:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rejected: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def snapshot(self) -> dict:
        return {
            "sent": dict(self.sent),
            "received": dict(self.received),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rejected": dict(self.rejected),
            "events": dict(self.events),
        }
