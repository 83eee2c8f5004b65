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
        perform(swim.update_own_load(running, waiting, now))                   # on a change

What it does, and where it comes from:

* Failure detection: SWIM (Das, Gupta, Motivala 2002) section 3 with Lifeguard
  (Dadgar et al. 2017): randomized round-robin probes, ping-req through
  ``indirect_checks`` members, nacks and local health (``Awareness``), suspicion timers
  shrinking with independent confirmations (``Suspicion``), refutation by incarnation.
  See ``mesh.gossip.probe``.
* Dissemination: news piggybacked on every ping, ack and ping-req, plus memberlist's
  gossip rounds (``gossip_fanout`` members every ``gossip_interval_s`` while there is
  news), each item sent O(log n) times (``mesh.gossip.broadcast``).
* Load: outside the signed record (``mesh.gossip.load``): every message carries this
  peer's own load; values about others ride in probes, acks and gossip rounds, a
  bounded number per message, and a gossip round runs (to ``load_gossip_fanout``
  members) while only load news is pending. Changing load never re-signs the record.
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
from collections.abc import Callable, Iterable

from mesh.gossip import messages as m
from mesh.gossip import sync
from mesh.gossip.config import GossipConfig
from mesh.gossip.effects import Effect, Send
from mesh.gossip.errors import GossipError, GossipReason
from mesh.gossip.load import Load, LoadBook, Verdict
from mesh.gossip.member import Member, MemberSnapshot, Status
from mesh.gossip.probe import Prober
from mesh.gossip.record import MemberRecord, RecordCache, Sign
from mesh.gossip.state import MemberState
from mesh.gossip.stats import GossipStats
from mesh.gossip.timing import retransmit_limit, sync_interval_s

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
        record_cache: RecordCache | None = None,
    ) -> None:
        self.peer_id = own.peer_id
        self.cfg = cfg
        self.stats = GossipStats()
        self._own = own
        self._rng = rng
        self._sign = sign
        self._records = record_cache or RecordCache(1024)
        self._fx: list[Effect] = []
        self._state = MemberState(
            own.peer_id,
            cfg,
            rng=rng,
            verify_record=verify_record,
            stats=self.stats,
            effects=self._fx,
            correct=self._correct,
        )
        self._prober = Prober(cfg, rng=rng, now=now, state=self._state, send=self._send, stats=self.stats)
        self._table = self._state.table
        self._queue = self._state.queue
        self._loads = LoadBook(own.peer_id, now=now, future_s=cfg.load_future_s, max_relay=cfg.max_load_relay)
        self._corrected: dict[bytes, float] = {}
        self._left = False
        self._pending_meta: dict | None = None
        self._meta_published_at = now
        self._join_seeds: tuple[str, ...] = ()
        self._join_attempts_left = 0
        self._next_join_at = INF
        self._next_gossip_at = now
        self._next_sync_at = now + rng.uniform(0.5, 1.0) * cfg.sync_interval_s
        self._next_reconnect_at = now + rng.uniform(0.5, 1.0) * cfg.reconnect_interval_s
        self._housekeeping_s = max(cfg.probe_interval_s, min(cfg.dead_reclaim_s, cfg.tombstone_s) / 10)
        self._next_housekeeping_at = now + self._housekeeping_s
        self._replying_to: tuple[bytes | None, tuple[str, ...]] = (None, ())  # receive's sender and its address
        self._state.queue_news(m.Alive(own), urgent=True)

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
        return self._state.n

    @property
    def pending_news(self) -> int:
        """News items still to be sent (after ``leave``, wait for 0 or a grace period)."""
        return len(self._queue)

    @property
    def awareness(self) -> int:
        """Lifeguard local health: 0 is healthy; probe timing is scaled by this + 1."""
        return self._prober.awareness.score

    @property
    def next_tick_at(self) -> float:
        """Call ``tick`` again no later than this (this peer's clock)."""
        t = min(self._next_sync_at, self._next_reconnect_at, self._next_housekeeping_at, self._next_join_at)
        if not self._left:
            t = min(t, self._prober.next_probe_at)
        t = min(t, self._prober.next_deadline, self._state.next_deadline)
        if len(self._queue) or self._loads.pending:
            t = min(t, self._next_gossip_at)
        if self._pending_meta is not None:
            t = min(t, self._meta_published_at + self.cfg.meta_min_interval_s)
        return t

    @property
    def rtts(self) -> dict[bytes, float]:
        """Smoothed round trip (seconds) of direct probes, per member probed so far."""
        return dict(self._prober.rtts)

    @property
    def own_load(self) -> Load:
        return self._loads.own

    def load_of(self, peer_id: bytes) -> Load | None:
        """The newest load this peer knows of ``peer_id`` (its own for itself), or None."""
        if peer_id == self.peer_id:
            return self._loads.own
        held = self._loads.get(peer_id)
        return None if held is None else held.load

    def members(self) -> list[MemberSnapshot]:
        """Every member in the table, this peer first, then by peer id."""
        others = sorted(self._table, key=lambda x: x.peer_id)
        return [self.member(self.peer_id), *(self._snapshot(x) for x in others)]

    def member(self, peer_id: bytes) -> MemberSnapshot | None:
        if peer_id == self.peer_id:
            return MemberSnapshot.of(self._self_member(), last_heard=None, is_self=True, load=self._loads.own)
        x = self._table.get(peer_id)
        return None if x is None else self._snapshot(x)

    def _snapshot(self, x) -> MemberSnapshot:
        held = self._loads.get(x.peer_id)
        return MemberSnapshot.of(x, last_heard=self._table.last_heard.get(x.peer_id),
                                 load=held.load if held else None, load_heard_at=held.heard_at if held else None)

    # --- what the shell calls ----------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Run every timer that is due at ``now``."""
        if self._pending_meta is not None and now >= self._meta_published_at + self.cfg.meta_min_interval_s:
            self._publish_meta(now)
        self._state.tick_suspicions(now)
        failed = self._prober.tick(now, probing=not self._left)
        if failed is not None:
            target, incarnation = failed
            x = self._table.get(target)
            if x is not None and x.live:
                self._state.apply_suspect(target, incarnation, self.peer_id, now)
        if (len(self._queue) or self._loads.pending) and now >= self._next_gossip_at:
            self._gossip_round(now)
        if now >= self._next_sync_at:
            self._next_sync_at = now + self.cfg.sync_interval_s * self._rng.uniform(0.8, 1.2)
            target = self._table.sample_live(self._rng, 1)
            if target and not self._left and self._scaled_chance(self.cfg.sync_interval_s):
                self._start_sync(target[0], now)
        if now >= self._next_reconnect_at:
            self._next_reconnect_at = now + self.cfg.reconnect_interval_s * self._rng.uniform(0.8, 1.2)
            dead = self._table.dead_ids()
            if dead and not self._left and self._scaled_chance(self.cfg.reconnect_interval_s):
                self._start_sync(dead[self._rng.randrange(len(dead))], now)
        if now >= self._next_join_at:
            self._send_join(now)
        if now >= self._next_housekeeping_at:
            self._next_housekeeping_at = now + self._housekeeping_s
            self._state.reclaim(now)
            self._loads.retain(self._table.__contains__)
            if len(self._corrected) > self.cfg.max_members:
                self._corrected.clear()
        return self._drain()

    def receive(self, sender: bytes, data: bytes, now: float, *, sender_address: str | None = None) -> list[Effect]:
        """Handle one datagram from ``sender`` (the authenticated peer id).

        ``sender_address``, when the transport knows it, is where replies to this
        datagram go (a joining peer, or one restarted at a new address, is reachable
        there before any record names it).
        """
        self._replying_to = (sender, (sender_address,) if sender_address else ())
        self.stats.bytes_received += len(data)
        if sender == self.peer_id:
            self.stats.rejected[GossipReason.FROM_SELF.value] += 1
            return self._drain()
        try:
            msg = m.decode_message(
                data,
                max_bytes=self.cfg.max_message_bytes,
                max_news=self.cfg.max_news_per_message,
                max_entries=self.cfg.max_members + 1,
                records=self._records,
            )
        except GossipError as e:
            self.stats.rejected[e.reason.value] += 1
            return self._drain()
        body = msg.body
        self.stats.received[m.type_name(body)] += 1
        for item in msg.news:
            self._on_news(item, sender, now)
        if msg.load is not None:
            self._on_load(sender, msg.load, now)  # first-hand: the envelope proved who sent it
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
                self._send(sender, m.Ack(body.seq), now)
        elif isinstance(body, m.Ack):
            self._prober.on_ack(body.seq, now)
        elif isinstance(body, m.PingReq):
            self._prober.on_ping_req(body, sender, now)
        elif isinstance(body, m.Nack):
            self._prober.on_nack(body.seq)
        elif isinstance(body, m.Sync):
            self._on_sync(body, sender, now)
        return self._drain()

    def join(self, seeds: Iterable[str], now: float) -> list[Effect]:
        """Push-pull with each seed address until one answers (``join_attempts`` tries)."""
        self._join_seeds = tuple(seeds)
        self._join_attempts_left = self.cfg.join_attempts
        self._send_join(now)
        return self._drain()

    def leave(self, now: float, *, meta: dict | None = None) -> list[Effect]:
        """Announce an owner-signed ``left`` record (carrying ``meta`` when given, e.g.
        that the peer is rotating its keys and comes back under a new id); stop probing
        and refuting.

        The shell should keep calling ``tick`` until ``pending_news`` is 0 or a grace
        period (a few ``gossip_interval_s``) passes, then stop.
        """
        if not self._left:
            self._left = True
            self._prober.stop()
            self._loads.own_pending = False
            self._own = self._resign(left=True, **({"meta": meta} if meta is not None else {}))
            self._state.queue_news(m.Alive(self._own), urgent=True)
            self._gossip_round(now)
        return self._drain()

    def update_own_load(self, running: int, waiting: int, now: float) -> list[Effect]:
        """This peer's load now (requests running, waiting). A change gets a new version
        that rides the next messages and gossip round; the record is not re-signed."""
        if not self._left:
            self._loads.set_own(running, waiting, now)
        return self._drain()

    def update_own_meta(self, meta: dict, now: float) -> list[Effect]:
        """Publish new meta (capabilities, models, load). At most one re-signed record per
        ``meta_min_interval_s``: calls in between replace the meta waiting to go out."""
        self._pending_meta = meta
        if now >= self._meta_published_at + self.cfg.meta_min_interval_s:
            self._publish_meta(now)
        return self._drain()

    def update_own_addresses(self, addresses: Iterable[str], now: float) -> list[Effect]:
        """Publish new addresses at once (urgent: others must reach us there)."""
        if not self._left:
            self._own = self._resign(addresses=tuple(addresses), **self._take_pending_meta())
            self._meta_published_at = now
            self._state.queue_news(m.Alive(self._own), urgent=True)
        return self._drain()

    def update_own_credential(self, credential: bytes, now: float) -> list[Effect]:
        """Present a new certificate (a renewal): re-sign this peer's record with it, urgently,
        so members check this peer's records against it before the old one expires."""
        if not self._left:
            self._own = self._resign(credential=credential, **self._take_pending_meta())
            self._meta_published_at = now
            self._state.queue_news(m.Alive(self._own), urgent=True)
        return self._drain()

    def expel(self, peer_id: bytes, now: float) -> list[Effect]:
        """The mesh authority revoked this member: declare it dead at once. It cannot
        refute, because the shell's ``verify_record`` refuses every record whose
        certificate is revoked, so it is never re-admitted with that certificate."""
        x = self._table.get(peer_id)
        if x is not None and peer_id != self.peer_id:
            self._state.apply_dead(peer_id, max(x.incarnation, x.record.incarnation), self.peer_id, now)
        return self._drain()

    def learn(self, records: Iterable[MemberRecord], now: float) -> list[Effect]:
        """Merge records from outside the protocol (a saved table, a test fixture), each
        verified like gossip, without queueing them for dissemination."""
        for r in records:
            if r.peer_id == self.peer_id:
                self._on_own_record(r, now)
            else:
                self._state.apply_record(r, None, now, rebroadcast=False)
        return self._drain()

    # --- news, and this peer's own record ------------------------------------------------

    def _on_news(self, item: m.News, sender: bytes, now: float) -> None:
        if isinstance(item, m.LoadNews):
            self._on_load(item.peer_id, item.load, now)
        elif isinstance(item, m.Alive):
            if item.record.peer_id == self.peer_id:
                self._on_own_record(item.record, now)
            else:
                self._state.apply_record(item.record, sender, now)
        elif item.peer_id == self.peer_id:
            self._on_claim_about_self(item.incarnation, now, via=sender, suspect=isinstance(item, m.Suspect))
        elif isinstance(item, m.Suspect):
            self._state.apply_suspect(item.peer_id, item.incarnation, item.sender, now, via=sender)
        else:
            self._state.apply_dead(item.peer_id, item.incarnation, item.sender, now, via=sender)

    def _on_load(self, peer_id: bytes, load: Load, now: float) -> None:
        verdict = self._loads.learn(peer_id, load, now, is_member=self._table.__contains__)
        if verdict is Verdict.AHEAD:
            self.stats.rejected[GossipReason.LOAD_AHEAD.value] += 1
        elif verdict is Verdict.REFUTED:
            self.stats.events["load_refuted"] += 1

    def _on_own_record(self, rec: MemberRecord, now: float) -> None:
        # A record of ours we did not sign in this life (a previous life, before a
        # restart): step above it, or the mesh keeps the ghost's addresses and meta.
        if rec.key >= self._own.key and rec != self._own and not self._left and self._state.verify(rec):
            self._refute(rec.incarnation, now)

    def _on_claim_about_self(self, inc: int, now: float, *, via: bytes | None, suspect: bool) -> None:
        if self._left:
            return
        if inc >= self._own.incarnation:
            if suspect:
                self._prober.awareness.apply(1)  # Lifeguard: being suspected hints we are slow
            self._refute(inc, now)
        elif via is not None:
            self._correct(via, m.Alive(self._own), now)  # it missed our refutation

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
        self._state.queue_news(m.Alive(self._own), urgent=True)

    def _publish_meta(self, now: float) -> None:
        if self._left:
            self._pending_meta = None
            return
        self._own = self._resign(**self._take_pending_meta())
        self._meta_published_at = now
        self._state.queue_news(m.Alive(self._own), urgent=False)

    def _self_member(self) -> Member:
        return Member(self._own, Status.LEFT if self._left else Status.ALIVE, self._own.incarnation, 0.0)

    # --- dissemination, anti-entropy, join -------------------------------------------------

    def _gossip_round(self, now: float) -> None:
        self._next_gossip_at = now + self.cfg.gossip_interval_s
        cutoff = now - self.cfg.gossip_to_dead_s
        # membership news goes to gossip_fanout members; load news alone to load_gossip_fanout
        fanout = self.cfg.gossip_fanout if len(self._queue) else self.cfg.load_gossip_fanout
        for pid in self._table.sample_gossip_targets(self._rng, fanout, dead_since=cutoff):
            if not len(self._queue) and not self._loads.pending:
                break
            self._send(pid, m.Gossip(), now)
        self._loads.own_pending = False

    def _scaled_chance(self, interval_s: float) -> bool:
        """Whether a periodic push-pull runs this time: on average once per
        ``sync_interval_s(interval_s, n)``, spread evenly however n changed since start."""
        return self._rng.random() * sync_interval_s(interval_s, self.n) < interval_s

    def _on_sync(self, s: m.Sync, sender: bytes, now: float) -> None:
        for e in s.entries:
            pid = e.record.peer_id
            if pid == self.peer_id:
                self._on_own_record(e.record, now)
                if e.status is Status.SUSPECT or e.status is Status.DEAD:
                    self._on_claim_about_self(e.incarnation, now, via=None, suspect=e.status is Status.SUSPECT)
                continue
            if (e.status is Status.DEAD or e.status is Status.LEFT) and pid not in self._table:
                continue  # no need to learn of the departed
            self._state.apply_record(e.record, sender, now)
            if e.status is Status.SUSPECT:
                self._state.apply_suspect(pid, e.incarnation, sender, now)
            elif e.status is Status.DEAD:
                self._state.apply_dead(pid, e.incarnation, sender, now)
        for d in s.digest or ():
            if d.peer_id == self.peer_id:
                self._on_digest_of_self(d, now)
        if s.reply:
            answer = m.Sync(self._delta(s.digest or ()), self._digest(), reply=False, join=s.join)
            self._send(sender, answer, now, piggyback=False)
        elif s.digest is not None:
            entries = self._delta(s.digest)
            if entries:
                self._send(sender, m.Sync(entries, None, reply=False, join=False), now, piggyback=False)
        if not s.reply and s.join and self._join_seeds:
            self._join_seeds, self._next_join_at = (), INF  # a seed answered: we are in

    def _on_digest_of_self(self, d: m.DigestEntry, now: float) -> None:
        """Someone holds a later state of us than we do: a claim like suspect/dead."""
        if self._left:
            return
        if d.record_key > self._own.key:
            self._refute(d.record_key[0], now)
        elif d.status is not Status.ALIVE and d.incarnation >= self._own.incarnation:
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

    # --- sending -------------------------------------------------------------------

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
            news.append(m.pack_news(self._state.assertion(x)))  # Lifeguard's buddy system: tell it first
        if piggyback and len(self._queue):
            budget = self.cfg.max_piggyback_bytes - sum(map(len, news))
            n = self.n
            limit = max(self.cfg.min_transmits, retransmit_limit(self.cfg.retransmit_mult, n))
            meta_limit = max(3, retransmit_limit(self.cfg.meta_retransmit_mult, n))
            news += self._queue.take(
                budget, limit, max_items=self.cfg.max_news_per_message - len(news), meta_limit=meta_limit
            )
        if piggyback and self._loads.relay_size:
            room = min(self.cfg.load_piggyback_max, self.cfg.max_news_per_message - len(news))
            limit = max(3, retransmit_limit(self.cfg.load_retransmit_mult, self.n))
            news += [m.pack_news(m.LoadNews(p, load)) for p, load in self._loads.take(room, limit)]
        if isinstance(body, m.Gossip) and not news and not self._loads.own_pending:
            return
        data = m.encode(body, news, load=None if self._left else self._loads.own)
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
        out = list(self._fx)
        self._fx.clear()
        self._replying_to = (None, ())
        return out
