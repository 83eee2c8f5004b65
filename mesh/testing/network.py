"""A deterministic in-process network of ``Swim`` peers, in virtual time.

``SimNetwork`` plays the shell for many ``mesh.gossip.Swim`` instances at once: it keeps
a virtual clock and an event queue, performs their ``Send`` effects as one-way
datagrams over a simulated network, and calls ``tick`` when each asks to be woken. Nothing
sleeps and nothing reads the wall clock: a minute of mesh life at 16 peers takes well
under a second, and the same seed gives the same run, message for message.

The network can, like memberlist's ``MockNetwork`` plus a fault layer:

* lose each datagram with probability ``loss`` (``set_loss``);
* delay each by ``latency_s`` plus up to ``jitter_s`` (so datagrams can reorder);
* split the peers into groups that cannot reach each other (``partition``) and
  ``heal``; drop exactly the datagrams a rule picks (``drop_where``);
* ``kill`` a peer (kill -9: it stops ticking; datagrams to it are dropped; its record
  stays wherever it had spread) and ``restart`` it (a fresh ``Swim`` with the same peer
  id and address at incarnation 0, that joins through a running peer);
* change a peer's load (``update_load``) or meta (``update_meta``);
* ``pause`` and ``resume`` a peer (SIGSTOP / SIGCONT: a gray failure; datagrams to it
  wait and are read on resume).

Signing is simulated by ``SimAuthority`` (keyed BLAKE2b instead of Ed25519, a fixed
credential per peer id instead of a certificate); ``forge_record`` builds a record every
peer's ``verify_record`` refuses, for tests of forged state.

Typical use::

    net = SimNetwork(seed=1, cfg=GossipConfig.for_tests(), loss=0.05)
    ids = net.start(8)                        # 8 peers, each joining through the first
    assert net.run_until(net.converged, timeout_s=10)
    net.kill(ids[3])
    assert net.run_until(lambda: net.all_see(ids[3], Status.DEAD), timeout_s=10)

``bootstrap(n)`` instead builds ``n`` peers that already know each other (through
``Swim.learn``), for benchmarks at large ``n`` where joining one by one would dominate.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mesh.gossip import (
    GossipConfig,
    MemberChanged,
    MemberRecord,
    MemberSnapshot,
    Send,
    Status,
    Swim,
)
from mesh.gossip.record import RecordCache

PORT = 7411


def default_meta(i: int) -> dict:
    """About what a real peer advertises: one model, hardware, load."""
    return {
        "models": [{"name": "smollm2-135m-instruct", "ctx": 2048, "tps": 48.0}],
        "hw": {"cpus": 8, "ram_mb": 16384, "gpu": None, "battery": False},
        "load": {"active": 0, "queued": 0},
    }


class SimAuthority:
    """Simulated identities: peer ids, signing secrets, credentials, and the verifier.

    Stands in for the mesh authority and Ed25519: ``sign_for(pid)`` is keyed BLAKE2b with
    the peer's secret; ``verify_record`` accepts a record only if its credential is the
    one issued for its peer id and its signature is the owner's. Usable on its own in
    pure tests of ``Swim`` (``record``, ``forge``).
    """

    def __init__(self, rng: random.Random, *, credential_bytes: int = 220) -> None:
        self._rng = rng
        self._credential_bytes = credential_bytes
        self._secrets: dict[bytes, bytes] = {}
        self._credentials: dict[bytes, bytes] = {}

    def new_identity(self) -> bytes:
        pid = self._rng.randbytes(16)
        self._secrets[pid] = self._rng.randbytes(32)
        cred = hashlib.blake2b(pid, key=b"authority", digest_size=32).digest()
        self._credentials[pid] = (cred * (self._credential_bytes // 32 + 1))[: self._credential_bytes]
        return pid

    def credential(self, pid: bytes) -> bytes:
        return self._credentials[pid]

    def sign_for(self, pid: bytes) -> Callable[[bytes], bytes]:
        secret = self._secrets[pid]
        return lambda payload: _mac(secret, payload)

    def verify_record(self, record: MemberRecord) -> bool:
        secret = self._secrets.get(record.peer_id)
        if secret is None or record.credential != self._credentials[record.peer_id]:
            return False
        return record.signature == _mac(secret, record.signed_payload())

    def record(
        self, pid: bytes, *, name: str = "peer", addresses: tuple[str, ...] = ("tcp://10.0.0.1:7411",), **fields
    ) -> MemberRecord:
        """A record of ``pid`` signed by its owner (``fields``: incarnation, version, meta, left)."""
        return MemberRecord.create(
            peer_id=pid,
            name=name,
            addresses=addresses,
            credential=self._credentials[pid],
            sign=self.sign_for(pid),
            **fields,
        )

    def forge(self, pid: bytes, **fields) -> MemberRecord:
        """A record about ``pid`` signed by someone else: ``verify_record`` refuses it."""
        base = {"incarnation": 99, "name": "forged", "addresses": ("tcp://6.6.6.6:7411",)}
        base.update(fields)
        return MemberRecord.create(
            peer_id=pid, credential=self._credentials[pid], sign=lambda b: _mac(b"attacker", b), **base
        )


@dataclass
class SimPeer:
    peer_id: bytes
    name: str
    address: str
    swim: Swim
    running: bool = True
    paused: bool = False  # SIGSTOP: no ticks; datagrams wait in ``backlog`` until resume
    backlog: list = field(default_factory=list)
    generation: int = 0  # bumped by restart; older tick events are ignored
    scheduled_at: float = float("inf")
    sent: Counter = field(default_factory=Counter)  # bytes sent by message kind, over all lives
    wire_sent: Counter = field(default_factory=Counter)  # the same on the wire (SimNetwork's wire_bytes)


class SimNetwork:
    def __init__(
        self,
        *,
        seed: int = 0,
        cfg: GossipConfig | None = None,
        loss: float = 0.0,
        latency_s: float = 0.001,
        jitter_s: float = 0.001,
        start_at: float = 1000.0,
        credential_bytes: int = 220,
        record_events: bool = True,
        wire_bytes: Callable[[Send], int] | None = None,
    ) -> None:
        self.cfg = cfg or GossipConfig.for_tests()
        self.now = start_at
        self.loss = loss
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.credential_bytes = credential_bytes
        self.record_events = record_events
        self.wire_bytes = wire_bytes  # what one datagram costs on the wire (envelope, credential, framing)
        self.rng = random.Random(seed)  # the network's own: loss, latency, ids
        self.authority = SimAuthority(random.Random(seed + 1), credential_bytes=credential_bytes)
        # One parse cache for all peers: parsing is pure, so sharing it changes no
        # behaviour, and N peers hearing the same record parse it once.
        self._records = RecordCache(1 << 16)
        self.peers: dict[bytes, SimPeer] = {}
        self.events: list[tuple[float, bytes, MemberChanged]] = []  # (time, observer, change)
        self.dropped: Counter = Counter()  # datagrams lost, by cause
        self.delivered = 0
        self._by_address: dict[str, bytes] = {}
        self._group: dict[bytes, int] | None = None
        self._drop_where: Callable[[bytes, bytes, str], bool] | None = None
        self._queue: list[tuple] = []
        self._counter = 0

    # --- peers -------------------------------------------------------------------

    def add(self, name: str | None = None, *, meta: dict | None = None, seeds: Iterable[str] = ()) -> bytes:
        """A new running peer; it joins through ``seeds`` (addresses) if any."""
        i = len(self.peers)
        pid = self.authority.new_identity()
        name = name or f"peer-{i}"
        address = f"tcp://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:{PORT}"
        peer = SimPeer(pid, name, address, swim=None)  # type: ignore[arg-type]
        self.peers[pid] = peer
        self._by_address[address] = pid
        peer.swim = self._new_swim(peer, meta if meta is not None else default_meta(i))
        self._schedule(peer)
        seeds = tuple(seeds)
        if seeds:
            self._perform(peer, peer.swim.join(seeds, self.now))
        return pid

    def start(self, n: int, *, meta: Callable[[int], dict] | None = None) -> list[bytes]:
        """``n`` peers; each joins through the first one."""
        first = self.add(meta=meta(0) if meta else None)
        ids = [first]
        for i in range(1, n):
            ids.append(self.add(meta=meta(i) if meta else None, seeds=[self.peers[first].address]))
        return ids

    def bootstrap(self, n: int) -> list[bytes]:
        """``n`` peers that already know each other's records (no join traffic)."""
        ids = [self.add() for _ in range(n)]
        records = [self.peers[p].swim.own_record for p in ids]
        for p in ids:
            self.peers[p].swim.learn(records, self.now)
            self._schedule(self.peers[p])
        return ids

    def join(self, pid: bytes, via: bytes) -> None:
        peer = self.peers[pid]
        self._perform(peer, peer.swim.join([self.peers[via].address], self.now))

    def kill(self, pid: bytes) -> None:
        """kill -9: no more ticks, no more datagrams in or out."""
        self.peers[pid].running = False

    def pause(self, pid: bytes) -> None:
        """SIGSTOP: the peer neither ticks nor reads; datagrams to it queue up (a gray failure)."""
        self.peers[pid].paused = True

    def resume(self, pid: bytes) -> None:
        """SIGCONT: the peer reads its queued datagrams, then runs its overdue timers."""
        peer = self.peers[pid]
        peer.paused = False
        backlog, peer.backlog = peer.backlog, []
        for src, data in backlog:
            self._perform(peer, peer.swim.receive(src, data, self.now, sender_address=self.peers[src].address))
        peer.scheduled_at = float("inf")
        self._schedule(peer)

    def restart(self, pid: bytes, *, via: bytes | None = None, meta: dict | None = None) -> None:
        """A fresh process with the same key and address: incarnation 0, empty table."""
        peer = self.peers[pid]
        peer.running = True
        peer.generation += 1
        peer.scheduled_at = float("inf")
        peer.swim = self._new_swim(peer, meta if meta is not None else default_meta(0))
        self._schedule(peer)
        via = via or next((p for p in self.running() if p != pid), None)
        if via is not None:
            self.join(pid, via)

    def leave(self, pid: bytes) -> None:
        peer = self.peers[pid]
        self._perform(peer, peer.swim.leave(self.now))

    def update_meta(self, pid: bytes, meta: dict) -> None:
        peer = self.peers[pid]
        self._perform(peer, peer.swim.update_own_meta(meta, self.now))

    def update_load(self, pid: bytes, running: int, waiting: int) -> None:
        """The peer's load changed (a request started or ended)."""
        peer = self.peers[pid]
        self._perform(peer, peer.swim.update_own_load(running, waiting, self.now))

    def running(self) -> list[bytes]:
        return [p for p, peer in self.peers.items() if peer.running]

    # --- faults --------------------------------------------------------------------

    def set_loss(self, loss: float) -> None:
        self.loss = loss

    def partition(self, *groups: Iterable[bytes]) -> None:
        """Only peers in the same group can reach each other (peers in no group: alone)."""
        self._group = {p: gi for gi, g in enumerate(groups) for p in g}

    def heal(self) -> None:
        self._group = None

    def drop_where(self, rule: Callable[[bytes, bytes, str], bool] | None) -> None:
        """Drop every datagram for which ``rule(src, dst, kind)`` is true (None: stop)."""
        self._drop_where = rule

    def forge_record(self, pid: bytes, **fields) -> MemberRecord:
        """A record about ``pid`` signed by someone else: every peer refuses it."""
        return self.authority.forge(pid, **fields)

    # --- running ---------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``, delivering and ticking in order."""
        end = self.now + seconds
        q = self._queue
        while q and q[0][0] <= end:
            t, _, kind, a, b, c = heapq.heappop(q)
            self.now = t
            if kind == 0:
                self._on_tick(a, b)
            else:
                self._on_deliver(a, b, c)
        self.now = end

    def run_until(self, done: Callable[[], bool], *, timeout_s: float, step_s: float | None = None) -> bool:
        """Run until ``done()`` (checked every ``step_s`` of virtual time) or the timeout."""
        step = step_s or self.cfg.probe_interval_s / 10
        deadline = self.now + timeout_s
        while self.now < deadline:
            if done():
                return True
            self.run(min(step, deadline - self.now))
        return done()

    # --- observing ---------------------------------------------------------------------

    def view(self, observer: bytes, target: bytes) -> MemberSnapshot | None:
        return self.peers[observer].swim.member(target)

    def status(self, observer: bytes, target: bytes) -> Status | None:
        v = self.view(observer, target)
        return None if v is None else v.status

    def all_see(self, target: bytes, status: Status, *, observers: Iterable[bytes] | None = None) -> bool:
        """Every running peer other than ``target`` sees ``target`` in ``status``."""
        obs = self.running() if observers is None else observers
        return all(self.status(o, target) is status for o in obs if o != target)

    def converged(self) -> bool:
        """Every running peer sees every other running peer alive, at its current record."""
        live = self.running()
        for o in live:
            swim = self.peers[o].swim
            for t in live:
                if t == o:
                    continue
                v = swim.member(t)
                own = self.peers[t].swim.own_record
                if v is None or v.status is not Status.ALIVE or v.incarnation != own.incarnation:
                    return False
        return True

    def changes(
        self, *, target: bytes | None = None, new: Status | None = None
    ) -> list[tuple[float, bytes, MemberChanged]]:
        return [
            e for e in self.events if (target is None or e[2].peer_id == target) and (new is None or e[2].new is new)
        ]

    # --- the shell's job ---------------------------------------------------------------

    def _new_swim(self, peer: SimPeer, meta: dict) -> Swim:
        own = self.authority.record(peer.peer_id, name=peer.name, addresses=(peer.address,), meta=meta)
        return Swim(
            own,
            self.cfg,
            now=self.now,
            rng=random.Random(self.rng.getrandbits(64)),
            sign=self.authority.sign_for(peer.peer_id),
            verify_record=self.authority.verify_record,
            record_cache=self._records,
        )

    def _push(self, t: float, kind: int, a, b, c=None) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (t, self._counter, kind, a, b, c))

    def _schedule(self, peer: SimPeer) -> None:
        t = max(peer.swim.next_tick_at, self.now)
        if t < peer.scheduled_at and t != float("inf"):
            peer.scheduled_at = t
            self._push(t, 0, peer.peer_id, peer.generation)

    def _on_tick(self, pid: bytes, generation: int) -> None:
        peer = self.peers[pid]
        if not peer.running or generation != peer.generation or self.now != peer.scheduled_at:
            return
        if peer.paused:
            peer.scheduled_at = float("inf")  # resume() reschedules
            return
        peer.scheduled_at = float("inf")
        self._perform(peer, peer.swim.tick(self.now))
        if peer.swim.next_tick_at <= self.now:  # a timer the core did not consume: never spin
            peer.scheduled_at = self.now + 1e-6
            self._push(peer.scheduled_at, 0, pid, generation)

    def _on_deliver(self, src: bytes, dst: bytes, data: bytes) -> None:
        peer = self.peers[dst]
        if not peer.running:
            self.dropped["dead_receiver"] += 1
            return
        if peer.paused:
            peer.backlog.append((src, data))
            return
        self.delivered += 1
        self._perform(peer, peer.swim.receive(src, data, self.now, sender_address=self.peers[src].address))

    def _perform(self, peer: SimPeer, effects: list) -> None:
        for fx in effects:
            if isinstance(fx, Send):
                self._send(peer, fx)
            elif isinstance(fx, MemberChanged) and self.record_events:
                self.events.append((self.now, peer.peer_id, fx))
        self._schedule(peer)

    def _send(self, peer: SimPeer, fx: Send) -> None:
        peer.sent[fx.kind] += len(fx.data)
        if self.wire_bytes is not None:
            peer.wire_sent[fx.kind] += self.wire_bytes(fx)
        dst = self._by_address.get(fx.addresses[0]) if fx.addresses else fx.peer_id
        if dst is None or dst not in self.peers:
            self.dropped["unroutable"] += 1
            return
        if self._group is not None:
            group = self._group.get(peer.peer_id)
            if group is None or group != self._group.get(dst):
                self.dropped["partition"] += 1
                return
        if self._drop_where is not None and self._drop_where(peer.peer_id, dst, fx.kind):
            self.dropped["rule"] += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.dropped["loss"] += 1
            return
        delay = self.latency_s + self.rng.uniform(0, self.jitter_s)
        self._push(self.now + delay, 1, peer.peer_id, dst, fx.data)


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=secret, digest_size=32).digest()
