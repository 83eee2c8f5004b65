"""What this peer holds about the other members, and what news does to it.

``MemberState`` owns the member table, the suspicion timers and the news queue, and
applies the merge rules (``mesh.gossip.merge``) with their side effects: verify a record
before it may change anything, start, confirm and expire Lifeguard suspicions, queue
rebroadcasts, emit ``MemberChanged`` / ``MemberUpdated``, reclaim the departed. News
about this peer itself is not handled here (``Swim`` refutes it).

When a peer shows it holds older news than we do (it sends an old record of itself,
or passes on a claim its owner already refuted), ``correct(peer_id, news, now)`` is
called so the shell-facing side can send it the newer news.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mesh.gossip import messages as m
from mesh.gossip.broadcast import BroadcastQueue
from mesh.gossip.config import GossipConfig
from mesh.gossip.effects import Effect, MemberChanged, MemberUpdated
from mesh.gossip.errors import GossipReason
from mesh.gossip.member import Member, Status
from mesh.gossip.merge import is_news, merge_dead, merge_record, merge_suspect
from mesh.gossip.probe import ProbeOrder
from mesh.gossip.record import MemberRecord
from mesh.gossip.stats import GossipStats
from mesh.gossip.suspicion import Suspicion
from mesh.gossip.table import MemberTable
from mesh.gossip.timing import suspicion_min_s

Correct = Callable[[bytes, m.News, float], None]


class MemberState:
    def __init__(
        self,
        self_id: bytes,
        cfg: GossipConfig,
        *,
        rng: random.Random,
        verify_record: Callable[[MemberRecord], bool],
        stats: GossipStats,
        effects: list[Effect],
        correct: Correct,
    ) -> None:
        self.self_id = self_id
        self.cfg = cfg
        self.table = MemberTable(max_members=cfg.max_members)
        self.queue = BroadcastQueue()
        self.order = ProbeOrder()
        self._rng = rng
        self._verify = verify_record
        self._stats = stats
        self._fx = effects
        self._correct = correct
        self._suspicions: dict[bytes, Suspicion] = {}

    @property
    def n(self) -> int:
        """Members believed live, this peer included: the ``n`` of the timing formulas."""
        return self.table.n_live + 1

    def verify(self, record: MemberRecord) -> bool:
        if self._verify(record):
            return True
        self._stats.rejected[GossipReason.BAD_RECORD.value] += 1
        return False

    def queue_news(self, item: m.News, *, urgent: bool) -> None:
        key = item.record.peer_id if isinstance(item, m.Alive) else item.peer_id
        self.queue.put(key, m.pack_news(item), urgent=urgent)

    def assertion(self, x: Member) -> m.News:
        """Our suspect/dead claim about ``x`` (which must be suspect or dead)."""
        cls = m.Suspect if x.status is Status.SUSPECT else m.Dead
        return cls(x.peer_id, x.incarnation, self.self_id)

    # --- news about others ------------------------------------------------------------

    def apply_record(self, rec: MemberRecord, sender: bytes | None, now: float, *, rebroadcast: bool = True) -> None:
        pid = rec.peer_id
        cur = self.table.get(pid)
        tomb = self.table.tombstone(pid) if cur is None else None
        if tomb is not None and rec.incarnation <= tomb:
            if sender == pid:  # a previous life of a reclaimed member: it must step above
                self._correct(pid, m.Dead(pid, tomb, self.self_id), now)
            return
        if not is_news(cur, rec):
            if sender == pid and cur is not None:
                if cur.record.key > rec.key:
                    self._correct(pid, m.Alive(cur.record), now)
                elif cur.status is Status.SUSPECT or cur.status is Status.DEAD:
                    self._correct(pid, self.assertion(cur), now)
            return
        if not self.verify(rec):  # only now: news costs a signature check, repeats do not
            return
        if cur is None and not self.table.has_room():
            victim = self.table.eviction_candidate()
            if victim is None:
                self._stats.rejected[GossipReason.TABLE_FULL.value] += 1
                return
            self.forget(victim.peer_id, now)
        new = merge_record(cur, rec, now=now)
        assert new is not None  # is_news held
        if tomb is not None:
            self.table.clear_tombstone(pid)
        self._apply(cur, new)
        if cur is None:
            self.order.add(pid, self._rng)
        if not rebroadcast or (cur is None and new.status is Status.LEFT):
            return
        if new.status is Status.ALIVE:
            urgent = cur is None or cur.status is not Status.ALIVE or rec.addresses != cur.record.addresses
            self.queue_news(m.Alive(rec), urgent=urgent)
        elif new.status is Status.LEFT and cur.status is not Status.LEFT:
            self.queue_news(m.Alive(rec), urgent=True)
        # suspect or dead: the assertion keeps the member's queue slot; the record waits

    def apply_suspect(self, pid: bytes, inc: int, frm: bytes, now: float, *, via: bytes | None = None) -> None:
        cur = self.table.get(pid)
        if self._stale_claim(cur, inc, via, now):
            return
        new = merge_suspect(cur, inc, now=now)
        if cur is not None and cur.status is Status.SUSPECT and inc >= cur.incarnation:
            if new is not None:
                self.table.put(new)
            s = self._suspicions.get(pid)
            if s is not None and s.confirm(frm):  # Lifeguard: an independent confirmation
                self._stats.events["confirmed"] += 1
                self.queue_news(m.Suspect(pid, inc, frm), urgent=True)
            return
        if new is None:
            return
        self._apply(cur, new)
        n = self.n
        k = min(self.cfg.suspicion_confirmations, max(0, n - 2))
        min_s = suspicion_min_s(self.cfg.suspicion_mult, n, self.cfg.probe_interval_s)
        self._suspicions[pid] = Suspicion(
            incarnation=inc, start=now, first_from=frm, k=k, min_s=min_s, max_s=min_s * self.cfg.suspicion_max_mult
        )
        self._stats.events["suspected"] += 1
        if frm != self.self_id:
            self.order.probe_next(pid)
        self.queue_news(m.Suspect(pid, inc, frm), urgent=True)

    def apply_dead(self, pid: bytes, inc: int, frm: bytes, now: float, *, via: bytes | None = None) -> None:
        cur = self.table.get(pid)
        if self._stale_claim(cur, inc, via, now):
            return
        new = merge_dead(cur, inc, now=now)
        if new is None:
            return
        self._apply(cur, new)
        self.queue_news(m.Dead(pid, inc, frm), urgent=True)

    def _stale_claim(self, cur: Member | None, inc: int, via: bytes | None, now: float) -> bool:
        """A suspect/dead claim below a refutation we hold: the peer that passed it on
        missed the refutation, so send it the owner's newer record."""
        if cur is None or inc >= cur.record.incarnation:
            return False
        if via is not None and via != cur.peer_id:
            self._correct(via, m.Alive(cur.record), now)
        return True

    def _apply(self, cur: Member | None, new: Member) -> None:
        self.table.put(new)
        pid = new.peer_id
        if new.status is not Status.SUSPECT:
            self._suspicions.pop(pid, None)
        if cur is None or cur.status is not new.status:
            old = None if cur is None else cur.status
            self._fx.append(MemberChanged(pid, new.record.name, old, new.status, new.incarnation))
        elif cur.record is not new.record:
            self._fx.append(MemberUpdated(pid, new.record.incarnation, new.record.version))

    # --- time ---------------------------------------------------------------------------

    @property
    def next_deadline(self) -> float:
        return min((s.deadline for s in self._suspicions.values()), default=float("inf"))

    def tick_suspicions(self, now: float) -> None:
        for pid, s in list(self._suspicions.items()):
            if now >= s.deadline:
                del self._suspicions[pid]
                x = self.table.get(pid)
                if x is not None and x.status is Status.SUSPECT:
                    self._stats.events["declared_dead"] += 1
                    self.apply_dead(pid, x.incarnation, self.self_id, now)

    def reclaim(self, now: float) -> None:
        """Drop dead and left entries older than ``dead_reclaim_s`` (tombstones remain)."""
        horizon = now - self.cfg.dead_reclaim_s
        for x in [x for x in self.table if not x.live and x.since <= horizon]:
            self.forget(x.peer_id, now)
        self.table.expire_tombstones(now)

    def forget(self, pid: bytes, now: float) -> None:
        gone = self.table.remove(pid, tombstone_until=now + self.cfg.tombstone_s)
        if gone is not None:
            self._suspicions.pop(pid, None)
            self.queue.drop(pid)
            self._stats.events["reclaimed"] += 1
            self._fx.append(MemberChanged(pid, gone.record.name, gone.status, None, gone.incarnation))
