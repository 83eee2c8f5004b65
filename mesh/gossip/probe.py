"""Probing: the probe in flight, the relays we run for others, the probe order.

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
from typing import TYPE_CHECKING

from mesh.gossip.config import GossipConfig
from mesh.gossip.messages import Ack, Nack, Ping, PingReq
from mesh.gossip.timing import Awareness

if TYPE_CHECKING:
    from mesh.gossip.state import MemberState


@dataclass(slots=True)
class Probe:
    target: bytes
    incarnation: int  # the target's, when the probe started: a failure is about that life only
    seq: int
    timeout_at: float  # send ping-reqs if no ack by then
    period_end: float  # suspect if no ack (direct or relayed) by then
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    sent_at: float = 0.0  # when the direct ping left: its ack measures the round trip


RTT_EWMA_ALPHA = 0.3  # weight of the newest round trip in Prober.rtts
MAX_RTTS = 4096  # round trips remembered (members come and go; the table is bounded)


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


class Prober:
    """Runs this peer's probes and the relays it serves for others.

    ``send(peer_id, body, now, fallback=..., piggyback=...)`` sends one message;
    ``tick`` returns ``(target, incarnation)`` of a probe that failed this period, to be
    suspected at the incarnation it had when the probe started (memberlist does the same:
    a target that refuted or restarted meanwhile is not suspected for its old silence).
    """

    def __init__(self, cfg: GossipConfig, *, rng: random.Random, now: float, state: MemberState, send, stats) -> None:
        self.cfg = cfg
        self.awareness = Awareness(cfg.awareness_max)
        self.next_probe_at = now + rng.uniform(0, cfg.probe_interval_s)
        self._rng = rng
        self._state = state
        self._send = send
        self._stats = stats
        self._probe: Probe | None = None
        self._relays: dict[int, Relay] = {}
        self._seq = rng.randrange(1 << 32)
        self.rtts: dict[bytes, float] = {}  # peer id -> smoothed round trip of direct probes, seconds

    @property
    def next_deadline(self) -> float:
        t = float("inf")
        p = self._probe
        if p is not None:
            t = p.period_end if p.indirect_sent else p.timeout_at
        for r in self._relays.values():
            t = min(t, r.expires_at if r.nack_at is None else r.nack_at)
        return t

    def stop(self) -> None:
        self._probe = None

    def tick(self, now: float, *, probing: bool) -> tuple[bytes, int] | None:
        self._tick_relays(now)
        failed = None
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            self._ask_others(p, now)
        if p is not None and now >= p.period_end:
            self._probe = None
            failed = self._failed(p)
        if self._probe is None and probing and now >= self.next_probe_at:
            self._start(now)
        return failed

    def _start(self, now: float) -> None:
        interval = self.awareness.scale(self.cfg.probe_interval_s)
        self.next_probe_at = now + interval
        table = self._state.table
        target = self._state.order.next(table.live_ids, self._probeable, self._rng)
        if target is not None:
            seq = self._next_seq()
            timeout = self.awareness.scale(self.cfg.probe_timeout_s)
            inc = table.get(target).incarnation
            self._probe = Probe(target, inc, seq, timeout_at=now + timeout, period_end=now + interval, sent_at=now)
            self._send(target, Ping(seq, target), now)

    def _ask_others(self, p: Probe, now: float) -> None:
        p.indirect_sent = True
        table = self._state.table
        helpers = table.sample_live(self._rng, self.cfg.indirect_checks, exclude=(p.target,))
        p.expected_nacks = len(helpers)
        target = table.get(p.target)
        req = PingReq(p.seq, p.target, target.record.addresses if target else (), nack=True)
        for h in helpers:
            self._send(h, req, now)
        # A second direct ping, in the role of memberlist's TCP fallback: one lost ping or
        # ack must not leave the target's fate to the relays alone.
        self._send(p.target, Ping(p.seq, p.target), now)

    def _failed(self, p: Probe) -> tuple[bytes, int]:
        self._stats.events["probe_failed"] += 1
        # Lifeguard: relays that did not even nack suggest the trouble is ours.
        self.awareness.apply(max(0, p.expected_nacks - p.nacks) if p.expected_nacks else 1)
        return p.target, p.incarnation

    def _probeable(self, pid: bytes) -> bool:
        x = self._state.table.get(pid)
        return x is not None and x.live

    def on_ack(self, seq: int, now: float) -> None:
        p = self._probe
        if p is not None and seq == p.seq:
            if not p.indirect_sent:
                self.awareness.apply(-1)
                self._record_rtt(p.target, now - p.sent_at)
            self._probe = None
            return
        r = self._relays.pop(seq, None)
        if r is not None:
            self._send(r.requester, Ack(r.requester_seq), now)
        else:
            self._stats.events["stale_ack"] += 1

    def _record_rtt(self, peer_id: bytes, sample: float) -> None:
        """Round trip of a direct probe (what routing adds to a remote peer's expected time)."""
        old = self.rtts.pop(peer_id, None)
        self.rtts[peer_id] = sample if old is None else RTT_EWMA_ALPHA * sample + (1 - RTT_EWMA_ALPHA) * old
        while len(self.rtts) > MAX_RTTS:
            self.rtts.pop(next(iter(self.rtts)))

    def on_nack(self, seq: int) -> None:
        if self._probe is not None and seq == self._probe.seq:
            self._probe.nacks += 1

    def on_ping_req(self, req: PingReq, sender: bytes, now: float) -> None:
        if len(self._relays) >= self.cfg.max_relays:
            self._stats.events["relay_full"] += 1
            return
        seq = self._next_seq()
        nack_at = now + self.cfg.probe_timeout_s if req.nack else None
        self._relays[seq] = Relay(sender, req.seq, nack_at, now + self.cfg.probe_interval_s)
        self._send(req.target, Ping(seq, req.target), now, fallback=req.addresses)

    def _tick_relays(self, now: float) -> None:
        for seq, r in list(self._relays.items()):
            if r.nack_at is not None and now >= r.nack_at:
                r.nack_at = None
                self._send(r.requester, Nack(r.requester_seq), now, piggyback=False)
            if now >= r.expires_at:
                del self._relays[seq]

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFF_FFFF_FFFF_FFFF
        return self._seq
