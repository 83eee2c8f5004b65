"""The gossip layer's one frozen configuration, with named presets.

Units are in the field names. The formulas that turn these into timeouts for a mesh of
``n`` members live in ``mesh.gossip.timing`` (memberlist's ``suspicionTimeout``,
``retransmitLimit`` and ``pushPullScale``, with Lifeguard's min/max suspicion).

``lan()`` is sized for the issue's targets: kill -9 -> every other member marks the peer
dead in under 6 s for a mesh of up to 16 peers (0.7 s periods: p99 about 4.4 s in the
simulator at 5% loss; 1 s periods gave about 7 s); one lost packet never evicts a live
peer (a false suspicion needs the direct ping and all ``indirect_checks`` relays to
fail, then ``suspicion_confirmations`` independent members to fail too, before the
short timer applies; otherwise the refutation has ``suspicion_max_mult`` times longer).
``for_tests()`` is the same protocol ten times faster in virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GossipConfig:
    # Failure detection (SWIM section 3.1, Lifeguard section 4)
    probe_interval_s: float = 0.7  # one protocol period: each member probes one other per period
    probe_timeout_s: float = 0.35  # wait for a direct ack before asking others (ping-req)
    indirect_checks: int = 3  # members asked to ping the target on our behalf (SWIM's k)
    suspicion_mult: float = 1.5  # min suspicion = mult * max(1, log10(n)) * probe_interval_s
    suspicion_max_mult: float = 6.0  # max suspicion = this * min (Lifeguard: timer starts here)
    suspicion_confirmations: int = 2  # independent suspicions that drive the timer to its min (Lifeguard K)
    awareness_max: int = 8  # Lifeguard local health: probe interval/timeout scale up to this factor

    # Dissemination (SWIM section 4.1; memberlist's gossip timer)
    # Each member sends a piece of news max(min_transmits, retransmit_mult * ceil(log10(n+1)))
    # times; a given member then misses it with probability about exp(-sends * (1 - loss)).
    retransmit_mult: int = 5  # memberlist uses 4: at n = 64 that left ~3% of joins missed by someone
    min_transmits: int = 10  # small meshes: ceil(log10(n+1)) is 1 there
    meta_retransmit_mult: int = 2  # meta-only refreshes (load): max(3, this * ceil(log10(n+1))) sends each
    gossip_interval_s: float = 0.2  # a gossip round between probes, while there is news to send
    gossip_fanout: int = 3  # members sent to per gossip round
    gossip_to_dead_s: float = 30.0  # a dead member still receives gossip this long (so it can refute)
    max_piggyback_bytes: int = 1400  # news bytes added to one message (one oversized item may go alone)
    max_news_per_message: int = 64  # news items in one message, sent or accepted

    # Load (requests running and waiting), outside the signed record (mesh.gossip.load).
    # Every message carries its sender's own load; up to load_piggyback_max values about
    # others ride along, each passed on max(3, load_retransmit_mult * ceil(log10(n+1))) times.
    load_piggyback_max: int = 16  # load values about others added to one message
    load_retransmit_mult: int = 3  # times each member passes a load value on, times ceil(log10(n+1))
    load_gossip_fanout: int = 1  # members sent to per gossip round when only load news is pending
    load_future_s: float = 30.0  # a load version (the owner's clock, ms) further ahead of ours is refused
    max_load_relay: int = 256  # load values waiting to be passed on (the most sent are dropped first)

    # Anti-entropy and membership lifetime
    sync_interval_s: float = 30.0  # push-pull full state with one random member (scaled up past 32 members)
    reconnect_interval_s: float = 10.0  # push-pull with one random dead member, so a healed partition merges
    join_retry_s: float = 1.0  # resend the join push-pull to the seeds until one answers
    join_attempts: int = 8  # then give up (the shell may call join() again)
    dead_reclaim_s: float = 3600.0  # a dead or left member's entry is dropped after this; a tombstone stays
    tombstone_s: float = 86400.0  # a tombstone refuses records at or below its incarnation this long
    meta_min_interval_s: float = 1.0  # own meta is re-signed and queued at most this often

    # Bounds on what the network feeds
    max_members: int = 4096  # entries in the member table (and, separately, tombstones)
    max_message_bytes: int = 512 * 1024  # a message longer than this is dropped before parsing
    max_sync_bytes: int = 480 * 1024  # entries in one push-pull message (a random part beyond)
    max_sync_meta_bytes: int = 16 * 1024  # of which meta-only news (load): gossip carries load, sync repairs
    max_relays: int = 256  # ping-req relays pending at once; more are refused

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("probe_timeout_s must be positive and below probe_interval_s")
        if self.gossip_fanout < 1 or self.retransmit_mult < 1 or self.indirect_checks < 0:
            raise ValueError("gossip_fanout and retransmit_mult must be >= 1, indirect_checks >= 0")
        if self.suspicion_max_mult < 1 or self.suspicion_mult <= 0 or self.awareness_max < 1:
            raise ValueError("suspicion multipliers and awareness_max must be >= 1")
        if self.load_piggyback_max < 0 or self.load_retransmit_mult < 1 or self.load_gossip_fanout < 0:
            raise ValueError("load_piggyback_max and load_gossip_fanout must be >= 0, load_retransmit_mult >= 1")
        if self.max_sync_bytes > self.max_message_bytes or self.max_piggyback_bytes > self.max_message_bytes:
            raise ValueError("max_sync_bytes and max_piggyback_bytes must fit in max_message_bytes")

    @classmethod
    def lan(cls) -> GossipConfig:
        return cls()

    @classmethod
    def for_tests(cls) -> GossipConfig:
        """The LAN protocol with 100 ms periods, for fast and virtual-time tests."""
        lan = cls.lan()
        return lan.scaled(0.1 / lan.probe_interval_s)

    def scaled(self, factor: float) -> GossipConfig:
        """The same protocol with every interval and timeout multiplied by ``factor``."""
        f = factor
        return replace(
            self,
            probe_interval_s=self.probe_interval_s * f,
            probe_timeout_s=self.probe_timeout_s * f,
            gossip_interval_s=self.gossip_interval_s * f,
            gossip_to_dead_s=self.gossip_to_dead_s * f,
            sync_interval_s=self.sync_interval_s * f,
            reconnect_interval_s=self.reconnect_interval_s * f,
            join_retry_s=self.join_retry_s * f,
            dead_reclaim_s=self.dead_reclaim_s * f,
            tombstone_s=self.tombstone_s * f,
            meta_min_interval_s=self.meta_min_interval_s * f,
        )

    def with_(self, **changes) -> GossipConfig:
        return replace(self, **changes)
