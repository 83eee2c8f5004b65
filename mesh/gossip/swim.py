"""The SWIM protocol state machine, with Lifeguard, over owner-signed member records.

Pure: no sockets, threads, clock or sleeping. The shell reads its clock once per event
and passes ``now`` (float seconds); randomness comes from the injected ``rng``; signing
and record verification are injected. Every call returns effects (``mesh.gossip.effects``)
for the shell to perform. Driving it::

    swim = Swim(own_record, GossipConfig.lan(), now=now, rng=random.Random(),
                sign=identity.sign, verify_record=check_record)
    perform(swim.join(["tcp://10.0.0.2:7411"], now))
    loop:
        wait for a datagram or until swim.next_tick_at
        perform(swim.receive(sender_peer_id, data, now, sender_address=addr))  # on a datagram
        perform(swim.tick(now))                                                # when due

What it does, and where it comes from:

* Failure detection: SWIM (Das, Gupta, Motivala 2002) section 3 with Lifeguard
  (Dadgar et al. 2017): randomized round-robin probes, ping-req through
  ``indirect_checks`` members, nacks and local health (``Awareness``), suspicion timers
  shrinking with independent confirmations (``Suspicion``), refutation by incarnation.
  See ``mesh.gossip.probe``.
* Dissemination: news piggybacked on every ping, ack and ping-req, plus memberlist's
  gossip rounds (``gossip_fanout`` members every ``gossip_interval_s`` while there is
  news), each item sent O(log n) times (``mesh.gossip.broadcast``).
* Anti-entropy: push-pull of the whole table with one random live member every
  ``sync_interval_s`` (scaled with n), and with one random dead member every
  ``reconnect_interval_s``, so two sides of a healed partition merge again.
* Records: only the owner signs its record (``mesh.gossip.record``); suspect and dead
  are assertions about ``(peer_id, incarnation)``; see ``mesh.gossip.merge``. When the
  mesh holds a newer record of this peer than its own (a previous life, before a
  restart) or suspects it or declares it dead, it refutes: re-signs its record above
  that incarnation. A peer that sends us a record older than what we hold of it is told
  (one correction per probe interval), so a restarted peer replaces its ghost at once.

``receive`` never raises for bad input: refused messages are counted in
``stats.rejected`` by ``GossipReason`` and dropped. ``sender`` must be the peer id the
shell authenticated (the envelope's signer).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterable

from mesh.gossip import messages as m
from mesh.gossip import sync
from mesh.gossip.broadcast import BroadcastQueue
from mesh.gossip.config import GossipConfig
from mesh.gossip.effects import Effect, MemberChanged, MemberUpdated, Send
from mesh.gossip.errors import GossipError, GossipReason
from mesh.gossip.member import Member, MemberView, Status
from mesh.gossip.merge import is_news, merge_dead, merge_record, merge_suspect
from mesh.gossip.probe import Probe, ProbeOrder, Relay
from mesh.gossip.record import MemberRecord, Sign
from mesh.gossip.stats import GossipStats
from mesh.gossip.suspicion import Suspicion
from mesh.gossip.table import MemberTable
from mesh.gossip.timing import Awareness, retransmit_limit, suspicion_min_s, sync_interval_s

INF = math.inf


class Swim:
    def __init__(
        self,
        own: MemberRecord,
        cfg: GossipConfig,
        *,
        now: float,
        rng: random.Random,
        sign: Sign,
        verify_record: Callable[[MemberRecord], bool],
    ) -> None:
        self.peer_id = own.peer_id
        self.cfg = cfg
        self.stats = GossipStats()
        self._own = own
        self._rng = rng
        self._sign = sign
        self._verify = verify_record
        self._table = MemberTable(max_members=cfg.max_members)
        self._queue = BroadcastQueue()
        self._suspicions: dict[bytes, Suspicion] = {}
        self._awareness = Awareness(cfg.awareness_max)
        self._order = ProbeOrder()
        self._probe: Probe | None = None
        self._relays: dict[int, Relay] = {}
        self._corrected: dict[bytes, float] = {}
        self._seq = rng.randrange(1 << 32)
        self._left = False
        self._pending_meta: dict | None = None
        self._meta_published_at = now
        self._join_seeds: tuple[str, ...] = ()
        self._join_attempts_left = 0
        self._next_join_at = INF
        self._next_probe_at = now + rng.uniform(0, cfg.probe_interval_s)
        self._next_gossip_at = now
        self._next_sync_at = now + rng.uniform(0.5, 1.0) * cfg.sync_interval_s
        self._next_reconnect_at = now + rng.uniform(0.5, 1.0) * cfg.reconnect_interval_s
        self._housekeeping_s = max(cfg.probe_interval_s, min(cfg.dead_reclaim_s, cfg.tombstone_s) / 10)
        self._next_housekeeping_at = now + self._housekeeping_s
        self._fx: list[Effect] = []
        self._replying_to: tuple[bytes | None, tuple[str, ...]] = (None, ())  # receive's sender and its address
        self._queue_news(m.Alive(own), urgent=True)

    # --- what the shell reads ----------------------------------------------------

    @property
    def own_record(self) -> MemberRecord:
        return self._own

    @property
    def left(self) -> bool:
        return self._left

    @property
    def n(self) -> int:
        """Members believed live, this peer included: the ``n`` of the timing formulas."""
        return self._table.n_live + 1

    @property
    def pending_news(self) -> int:
        """News items still to be sent (after ``leave``, wait for 0 or a grace period)."""
        return len(self._queue)

    @property
    def awareness(self) -> int:
        return self._awareness.score

    @property
    def next_tick_at(self) -> float:
        """Call ``tick`` again no later than this (this peer's clock)."""
        t = min(self._next_sync_at, self._next_reconnect_at, self._next_housekeeping_at, self._next_join_at)
        if not self._left:
            t = min(t, self._next_probe_at)
        p = self._probe
        if p is not None:
            t = min(t, p.period_end if p.indirect_sent else p.timeout_at)
        if len(self._queue):
            t = min(t, self._next_gossip_at)
        if self._pending_meta is not None:
            t = min(t, self._meta_published_at + self.cfg.meta_min_interval_s)
        for s in self._suspicions.values():
            t = min(t, s.deadline)
        for r in self._relays.values():
            t = min(t, r.expires_at if r.nack_at is None else r.nack_at)
        return t

    def members(self) -> list[MemberView]:
        """Every member in the table, this peer first, then by peer id."""
        views = [MemberView.of(self._self_member(), last_heard=None, is_self=True)]
        heard = self._table.last_heard
        others = sorted(self._table, key=lambda x: x.peer_id)
        views.extend(MemberView.of(x, last_heard=heard.get(x.peer_id)) for x in others)
        return views

    def member(self, peer_id: bytes) -> MemberView | None:
        if peer_id == self.peer_id:
            return self.members()[0]
        x = self._table.get(peer_id)
        return None if x is None else MemberView.of(x, last_heard=self._table.last_heard.get(peer_id))

    # --- what the shell calls ----------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Run every timer that is due at ``now``."""
        self._fx = []
        if self._pending_meta is not None and now >= self._meta_published_at + self.cfg.meta_min_interval_s:
            self._publish_meta(now)
        self._tick_suspicions(now)
        self._tick_relays(now)
        self._tick_probe(now)
        if len(self._queue) and now >= self._next_gossip_at:
            self._gossip_round(now)
        if now >= self._next_sync_at:
            self._next_sync_at = now + sync_interval_s(self.cfg.sync_interval_s, self.n) * self._rng.uniform(0.8, 1.2)
            target = self._table.sample_live(self._rng, 1)
            if target and not self._left:
                self._start_sync(target[0], now)
        if now >= self._next_reconnect_at:
            scaled = sync_interval_s(self.cfg.reconnect_interval_s, self.n)
            self._next_reconnect_at = now + scaled * self._rng.uniform(0.8, 1.2)
            dead = self._table.dead_ids()
            if dead and not self._left:
                target = dead[self._rng.randrange(len(dead))]
                self._start_sync(target, now)
        if now >= self._next_join_at:
            self._send_join(now)
        if now >= self._next_housekeeping_at:
            self._next_housekeeping_at = now + self._housekeeping_s
            self._reclaim(now)
        return self._drain()

    def receive(self, sender: bytes, data: bytes, now: float, *, sender_address: str | None = None) -> list[Effect]:
        """Handle one datagram from ``sender`` (the authenticated peer id).

        ``sender_address``, when the transport knows it, is used to answer a sender whose
        record we do not hold yet (a joining peer).
        """
        self._fx = []
        self._replying_to = (sender, (sender_address,) if sender_address else ())
        self.stats.bytes_received += len(data)
        if sender == self.peer_id:
            self.stats.rejected[GossipReason.FROM_SELF.value] += 1
            return []
        try:
            body, news = m.decode(
                data,
                max_bytes=self.cfg.max_message_bytes,
                max_news=self.cfg.max_news_per_message,
                max_entries=self.cfg.max_members + 1,
            )
        except GossipError as e:
            self.stats.rejected[e.reason.value] += 1
            return []
        self.stats.received[m.type_name(body)] += 1
        fallback = self._replying_to[1]
        for item in news:
            self._on_news(item, sender, now)
        if sender in self._table:
            self._table.last_heard[sender] = now
        elif not isinstance(body, m.Sync) and self._table.tombstone(sender) is None and not self._left:
            # It knows us, we do not know it (its join news missed us): ask for its state.
            if self._may_correct(sender, now):
                self.stats.events["introduced"] += 1
                self._start_sync(sender, now)
        if isinstance(body, m.Ping):
            if body.target != self.peer_id:
                self.stats.rejected[GossipReason.MISDIRECTED.value] += 1
            else:
                self._send(sender, m.Ack(body.seq), now, fallback=fallback)
        elif isinstance(body, m.Ack):
            self._on_ack(body.seq, now)
        elif isinstance(body, m.PingReq):
            self._on_ping_req(body, sender, now, fallback)
        elif isinstance(body, m.Nack):
            if self._probe is not None and body.seq == self._probe.seq:
                self._probe.nacks += 1
        elif isinstance(body, m.Sync):
            self._on_sync(body, sender, now, fallback)
        return self._drain()

    def join(self, seeds: Iterable[str], now: float) -> list[Effect]:
        """Push-pull with each seed address until one answers (``join_attempts`` tries)."""
        self._fx = []
        self._join_seeds = tuple(seeds)
        self._join_attempts_left = self.cfg.join_attempts
        self._send_join(now)
        return self._drain()

    def leave(self, now: float) -> list[Effect]:
        """Announce an owner-signed ``left`` record; stop probing and refuting.

        The shell should keep calling ``tick`` until ``pending_news`` is 0 or a grace
        period (a few ``gossip_interval_s``) passes, then stop.
        """
        self._fx = []
        if not self._left:
            self._left = True
            self._probe = None
            self._own = self._resign(left=True)
            self._queue_news(m.Alive(self._own), urgent=True)
            self._gossip_round(now)
        return self._drain()

    def update_own_meta(self, meta: dict, now: float) -> list[Effect]:
        """Publish new meta (capabilities, models, load). At most one re-signed record per
        ``meta_min_interval_s``: calls in between replace the meta waiting to go out."""
        self._fx = []
        self._pending_meta = meta
        if now >= self._meta_published_at + self.cfg.meta_min_interval_s:
            self._publish_meta(now)
        return self._drain()

    def update_own_addresses(self, addresses: Iterable[str], now: float) -> list[Effect]:
        """Publish new addresses at once (urgent: others must reach us there)."""
        self._fx = []
        if not self._left:
            self._own = self._resign(addresses=tuple(addresses), **self._take_pending_meta())
            self._meta_published_at = now
            self._queue_news(m.Alive(self._own), urgent=True)
        return self._drain()

    def learn(self, records: Iterable[MemberRecord], now: float) -> list[Effect]:
        """Merge records from outside the protocol (a saved table, a test fixture), each
        verified like gossip, without queueing them for dissemination."""
        self._fx = []
        for r in records:
            self._on_record(r, None, now, rebroadcast=False)
        return self._drain()

    # --- news ----------------------------------------------------------------------

    def _on_news(self, item: m.News, sender: bytes, now: float) -> None:
        if isinstance(item, m.Alive):
            self._on_record(item.record, sender, now)
        elif isinstance(item, m.Suspect):
            self._on_suspect(item.peer_id, item.incarnation, item.sender, now, via=sender)
        else:
            self._on_dead(item.peer_id, item.incarnation, item.sender, now, via=sender)

    def _on_record(self, rec: MemberRecord, sender: bytes | None, now: float, *, rebroadcast: bool = True) -> None:
        pid = rec.peer_id
        if pid == self.peer_id:
            # A record of ours we did not sign in this life (a previous life, before a
            # restart): step above it, or the mesh keeps the ghost's addresses and meta.
            if rec.key >= self._own.key and rec != self._own and not self._left:
                if self._verify(rec):
                    self._refute(rec.incarnation, now)
                else:
                    self.stats.rejected[GossipReason.BAD_RECORD.value] += 1
            return
        cur = self._table.get(pid)
        tomb = self._table.tombstone(pid) if cur is None else None
        if tomb is not None and rec.incarnation <= tomb:
            if sender == pid:
                self._correct(pid, m.Dead(pid, tomb, self.peer_id), now)
            return
        if not is_news(cur, rec):
            if sender == pid and cur is not None:
                if cur.record.key > rec.key:
                    self._correct(pid, m.Alive(cur.record), now)
                elif cur.status is not Status.ALIVE and cur.status is not Status.LEFT:
                    self._correct(pid, self._assertion(cur), now)
            return
        if not self._verify(rec):
            self.stats.rejected[GossipReason.BAD_RECORD.value] += 1
            return
        if cur is None and not self._table.has_room():
            victim = self._table.eviction_candidate()
            if victim is None:
                self.stats.rejected[GossipReason.TABLE_FULL.value] += 1
                return
            self._forget(victim.peer_id, now)
        new = merge_record(cur, rec, now=now)
        assert new is not None  # is_news held
        if tomb is not None:
            self._table.clear_tombstone(pid)
        self._apply(cur, new)
        if cur is None:
            self._order.add(pid, self._rng)
        if not rebroadcast or (cur is None and new.status is Status.LEFT):
            return
        if new.status is Status.ALIVE:
            urgent = cur is None or cur.status is not Status.ALIVE or rec.addresses != cur.record.addresses
            self._queue_news(m.Alive(rec), urgent=urgent)
        elif new.status is Status.LEFT and cur.status is not Status.LEFT:
            self._queue_news(m.Alive(rec), urgent=True)
        # suspect or dead: the assertion keeps the member's queue slot; the record waits

    def _on_suspect(self, pid: bytes, inc: int, frm: bytes, now: float, *, via: bytes | None = None) -> None:
        if pid == self.peer_id:
            if inc >= self._own.incarnation and not self._left:
                self._awareness.apply(1)  # Lifeguard: being suspected hints we are slow
                self._refute(inc, now)
            elif via is not None and not self._left:
                self._correct(via, m.Alive(self._own), now)  # it missed our refutation
            return
        cur = self._table.get(pid)
        if self._stale_claim(cur, inc, via, now):
            return
        new = merge_suspect(cur, inc, now=now)
        if cur is not None and cur.status is Status.SUSPECT and inc >= cur.incarnation:
            if new is not None:
                self._table.put(new)
            s = self._suspicions.get(pid)
            if s is not None and s.confirm(frm):
                self.stats.events["confirmed"] += 1
                self._queue_news(m.Suspect(pid, inc, frm), urgent=True)
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
        self.stats.events["suspected"] += 1
        if frm != self.peer_id:
            self._order.probe_next(pid)
        self._queue_news(m.Suspect(pid, inc, frm), urgent=True)

    def _on_dead(self, pid: bytes, inc: int, frm: bytes, now: float, *, via: bytes | None = None) -> None:
        if pid == self.peer_id:
            if inc >= self._own.incarnation and not self._left:
                self._refute(inc, now)
            elif via is not None and not self._left:
                self._correct(via, m.Alive(self._own), now)
            return
        cur = self._table.get(pid)
        if self._stale_claim(cur, inc, via, now):
            return
        new = merge_dead(cur, inc, now=now)
        if new is None:
            return
        self._apply(cur, new)
        self._queue_news(m.Dead(pid, inc, frm), urgent=True)

    def _stale_claim(self, cur: Member | None, inc: int, via: bytes | None, now: float) -> bool:
        """A suspect/dead claim below a refutation we hold: the peer that passed it on
        missed the refutation, so send it the owner's newer record."""
        if cur is None or inc >= cur.record.incarnation:
            return False
        if via is not None and via != cur.peer_id:
            self._correct(via, m.Alive(cur.record), now)
        return True

    def _apply(self, cur: Member | None, new: Member) -> None:
        self._table.put(new)
        pid = new.peer_id
        if new.status is not Status.SUSPECT:
            self._suspicions.pop(pid, None)
        if cur is None or cur.status is not new.status:
            old = None if cur is None else cur.status
            self._fx.append(MemberChanged(pid, new.record.name, old, new.status, new.incarnation))
        elif cur.record is not new.record:
            self._fx.append(MemberUpdated(pid, new.record.incarnation, new.record.version))

    def _forget(self, pid: bytes, now: float) -> None:
        gone = self._table.remove(pid, tombstone_until=now + self.cfg.tombstone_s)
        if gone is not None:
            self._suspicions.pop(pid, None)
            self._queue.drop(pid)
            self.stats.events["reclaimed"] += 1
            self._fx.append(MemberChanged(pid, gone.record.name, gone.status, None, gone.incarnation))

    # --- own record ----------------------------------------------------------------

    def _resign(self, **changes) -> MemberRecord:
        changes.setdefault("version", self._own.version + 1)
        return self._own.resigned(sign=self._sign, **changes)

    def _take_pending_meta(self) -> dict:
        meta, self._pending_meta = self._pending_meta, None
        return {} if meta is None else {"meta": meta}

    def _refute(self, inc: int, now: float) -> None:
        self._own = self._resign(incarnation=max(inc, self._own.incarnation) + 1, **self._take_pending_meta())
        self._meta_published_at = now
        self.stats.events["refuted"] += 1
        self._queue_news(m.Alive(self._own), urgent=True)

    def _publish_meta(self, now: float) -> None:
        if self._left:
            self._pending_meta = None
            return
        self._own = self._resign(**self._take_pending_meta())
        self._meta_published_at = now
        self._queue_news(m.Alive(self._own), urgent=False)

    # --- probing -------------------------------------------------------------------

    def _tick_probe(self, now: float) -> None:
        p = self._probe
        if p is not None and not p.indirect_sent and now >= p.timeout_at:
            p.indirect_sent = True
            helpers = self._table.sample_live(self._rng, self.cfg.indirect_checks, exclude=(p.target,))
            p.expected_nacks = len(helpers)
            req = m.PingReq(p.seq, p.target, self._addresses(p.target), nack=True)
            for h in helpers:
                self._send(h, req, now)
            # A second direct ping, in the role of memberlist's TCP fallback: one lost
            # ping or ack must not leave the target's fate to the relays alone.
            self._send(p.target, m.Ping(p.seq, p.target), now)
        if p is not None and now >= p.period_end:
            self._probe = None
            self._probe_failed(p, now)
        if self._probe is None and not self._left and now >= self._next_probe_at:
            interval = self._awareness.scale(self.cfg.probe_interval_s)
            self._next_probe_at = now + interval
            target = self._order.next(self._table.live_ids, self._probeable, self._rng)
            if target is not None:
                seq = self._next_seq()
                timeout = self._awareness.scale(self.cfg.probe_timeout_s)
                self._probe = Probe(target, seq, timeout_at=now + timeout, period_end=now + interval)
                self._send(target, m.Ping(seq, target), now)

    def _probeable(self, pid: bytes) -> bool:
        x = self._table.get(pid)
        return x is not None and x.live

    def _probe_failed(self, p: Probe, now: float) -> None:
        self.stats.events["probe_failed"] += 1
        if p.expected_nacks > 0:
            self._awareness.apply(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness.apply(1)
        x = self._table.get(p.target)
        if x is not None and x.live:
            self._on_suspect(p.target, x.incarnation, self.peer_id, now)

    def _on_ack(self, seq: int, now: float) -> None:
        p = self._probe
        if p is not None and seq == p.seq:
            if not p.indirect_sent:
                self._awareness.apply(-1)
            self._probe = None
            return
        r = self._relays.pop(seq, None)
        if r is not None:
            self._send(r.requester, m.Ack(r.requester_seq), now)
        else:
            self.stats.events["stale_ack"] += 1

    def _on_ping_req(self, req: m.PingReq, sender: bytes, now: float, fallback: tuple[str, ...]) -> None:
        if len(self._relays) >= self.cfg.max_relays:
            self.stats.events["relay_full"] += 1
            return
        seq = self._next_seq()
        nack_at = now + self.cfg.probe_timeout_s if req.nack else None
        self._relays[seq] = Relay(sender, req.seq, nack_at, now + self.cfg.probe_interval_s)
        self._send(req.target, m.Ping(seq, req.target), now, fallback=req.addresses)

    def _tick_relays(self, now: float) -> None:
        for seq, r in list(self._relays.items()):
            if r.nack_at is not None and now >= r.nack_at:
                r.nack_at = None
                self._send(r.requester, m.Nack(r.requester_seq), now, piggyback=False)
            if now >= r.expires_at:
                del self._relays[seq]

    def _tick_suspicions(self, now: float) -> None:
        for pid, s in list(self._suspicions.items()):
            if now >= s.deadline:
                del self._suspicions[pid]
                x = self._table.get(pid)
                if x is not None and x.status is Status.SUSPECT:
                    self.stats.events["declared_dead"] += 1
                    self._on_dead(pid, x.incarnation, self.peer_id, now)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFF_FFFF_FFFF_FFFF
        return self._seq

    # --- dissemination, sync, join ---------------------------------------------------

    def _gossip_round(self, now: float) -> None:
        self._next_gossip_at = now + self.cfg.gossip_interval_s
        cutoff = now - self.cfg.gossip_to_dead_s
        for pid in self._table.sample_gossip_targets(self._rng, self.cfg.gossip_fanout, dead_since=cutoff):
            if not len(self._queue):
                break
            self._send(pid, m.Gossip(), now)

    def _on_sync(self, sync: m.Sync, sender: bytes, now: float, fallback: tuple[str, ...]) -> None:
        for e in sync.entries:
            pid = e.record.peer_id
            if e.status in (Status.DEAD, Status.LEFT) and pid != self.peer_id and pid not in self._table:
                continue  # no need to learn of the departed
            self._on_record(e.record, sender, now)
            if e.status is Status.SUSPECT:
                self._on_suspect(pid, e.incarnation, sender, now)
            elif e.status is Status.DEAD:
                self._on_dead(pid, e.incarnation, sender, now)
        if sync.digest is not None:
            for d in sync.digest:
                if d.peer_id == self.peer_id:
                    self._on_digest_of_self(d, now)
        if sync.reply:
            entries = self._delta(sync.digest or ())
            answer = m.Sync(entries, self._digest(), reply=False, join=sync.join)
            self._send(sender, answer, now, fallback=fallback, piggyback=False)
        elif sync.digest is not None:
            entries = self._delta(sync.digest)
            if entries:
                self._send(
                    sender, m.Sync(entries, None, reply=False, join=False), now, fallback=fallback, piggyback=False
                )
        if not sync.reply and sync.join and self._join_seeds:
            self._join_seeds, self._next_join_at = (), INF  # a seed answered: we are in

    def _on_digest_of_self(self, d: m.DigestEntry, now: float) -> None:
        """Someone holds a later state of us than we do: a claim like suspect/dead."""
        if self._left:
            return
        if d.record_key > self._own.key:
            self._refute(d.record_key[0], now)
        elif d.status in (Status.SUSPECT, Status.DEAD, Status.LEFT) and d.incarnation >= self._own.incarnation:
            self._refute(d.incarnation, now)

    def _send_join(self, now: float) -> None:
        if not self._join_seeds or self._join_attempts_left <= 0:
            self._join_seeds, self._next_join_at = (), INF
            return
        self._join_attempts_left -= 1
        self._next_join_at = now + self.cfg.join_retry_s
        own = self._self_member()
        join = m.Sync((m.SyncEntry(own.status, own.incarnation, own.record),), self._digest(), reply=True, join=True)
        for address in self._join_seeds:
            self._send(None, join, now, fallback=(address,), piggyback=False)

    def _start_sync(self, target: bytes, now: float) -> None:
        self._send(target, m.Sync((), self._digest(), reply=True, join=False), now, piggyback=False)

    def _self_member(self) -> Member:
        return Member(self._own, Status.LEFT if self._left else Status.ALIVE, self._own.incarnation, 0.0)

    def _digest(self) -> tuple[m.DigestEntry, ...]:
        return sync.digest([self._self_member(), *self._table])

    def _delta(self, theirs: tuple[m.DigestEntry, ...]) -> tuple[m.SyncEntry, ...]:
        return sync.delta(
            [self._self_member(), *self._table],
            theirs,
            rng=self._rng,
            max_bytes=self.cfg.max_sync_bytes,
            max_meta_bytes=self.cfg.max_sync_meta_bytes,
        )

    def _reclaim(self, now: float) -> None:
        horizon = now - self.cfg.dead_reclaim_s
        for x in [x for x in self._table if not x.live and x.since <= horizon]:
            self._forget(x.peer_id, now)
        self._table.expire_tombstones(now)
        if len(self._corrected) > self.cfg.max_members:
            self._corrected.clear()

    # --- sending -------------------------------------------------------------------

    def _queue_news(self, item: m.News, *, urgent: bool) -> None:
        key = item.record.peer_id if isinstance(item, m.Alive) else item.peer_id
        self._queue.put(key, m.pack_news(item), urgent=urgent)

    def _assertion(self, x: Member) -> m.News:
        cls = m.Suspect if x.status is Status.SUSPECT else m.Dead
        return cls(x.peer_id, x.incarnation, self.peer_id)

    def _may_correct(self, pid: bytes, now: float) -> bool:
        """At most one unsolicited correction or introduction per peer per probe interval."""
        if now < self._corrected.get(pid, -INF) + self.cfg.probe_interval_s:
            return False
        self._corrected[pid] = now
        return True

    def _correct(self, pid: bytes, item: m.News, now: float) -> None:
        """Tell a peer what we hold about it when it sends us something older (a restarted
        peer learns of its ghost at once; a peer that missed a refutation gets it)."""
        if not self._may_correct(pid, now):
            return
        self.stats.events["corrected"] += 1
        self._send(pid, m.Gossip(), now, extra=m.pack_news(item), piggyback=False)

    def _addresses(self, pid: bytes) -> tuple[str, ...]:
        x = self._table.get(pid)
        return () if x is None else x.record.addresses

    def _send(
        self,
        pid: bytes | None,
        body: m.Body,
        now: float,
        *,
        fallback: tuple[str, ...] = (),
        piggyback: bool = True,
        extra: bytes | None = None,
    ) -> None:
        news: list[bytes] = [] if extra is None else [extra]
        x = self._table.get(pid) if pid is not None else None
        if x is not None and extra is None and (x.status is Status.SUSPECT or x.status is Status.DEAD):
            news.append(m.pack_news(self._assertion(x)))  # Lifeguard's buddy system: tell it first
        if piggyback and len(self._queue):
            budget = self.cfg.max_piggyback_bytes - sum(map(len, news))
            limit = max(self.cfg.min_transmits, retransmit_limit(self.cfg.retransmit_mult, self.n))
            news += self._queue.take(budget, limit, max_items=self.cfg.max_news_per_message - len(news))
        if isinstance(body, m.Gossip) and not news:
            return
        data = m.encode(body, news)
        if pid is not None and pid == self._replying_to[0] and self._replying_to[1]:
            # a reply goes where the sender is now: a restarted peer may have a new address
            # that no record we hold names yet
            addresses = self._replying_to[1]
        else:
            addresses = x.record.addresses if x is not None and x.record.addresses else fallback
        kind = m.type_name(body)
        self.stats.sent[kind] += 1
        self.stats.bytes_sent += len(data)
        self._fx.append(Send(pid, addresses, data, kind))

    def _drain(self) -> list[Effect]:
        out, self._fx = self._fx, []
        self._replying_to = (None, ())
        return out
