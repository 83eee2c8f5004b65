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
  ``heal``;
* ``kill`` a peer (kill -9: it stops ticking; datagrams to it are dropped; its record
  stays wherever it had spread) and ``restart`` it (a fresh ``Swim`` with the same peer
  id and address at incarnation 0, that joins through a running peer).

Signing is simulated: each peer has a secret, ``sign`` is keyed BLAKE2b, and
``verify_record`` checks the record's signature and that its credential is the one the
simulated authority issued for its peer id. ``forge_record`` builds a record the
verifier refuses, for tests of forged state.

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

from mesh.gossip import GossipConfig, MemberChanged, MemberRecord, MemberView, Send, Status, Swim

PORT = 7411


def default_meta(i: int) -> dict:
    """About what a real peer advertises: one model, hardware, load."""
    return {
        "models": [{"name": "smollm2-135m-instruct", "ctx": 2048, "tps": 48.0}],
        "hw": {"cpus": 8, "ram_mb": 16384, "gpu": None, "battery": False},
        "load": {"active": 0, "queued": 0},
    }


@dataclass
class SimPeer:
    peer_id: bytes
    name: str
    address: str
    secret: bytes
    credential: bytes
    swim: Swim
    running: bool = True
    generation: int = 0  # bumped by restart; older tick events are ignored
    scheduled_at: float = float("inf")
    sent: Counter = field(default_factory=Counter)  # bytes sent by message kind, over all lives


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
    ) -> None:
        self.cfg = cfg or GossipConfig.for_tests()
        self.now = start_at
        self.loss = loss
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.credential_bytes = credential_bytes
        self.record_events = record_events
        self.rng = random.Random(seed)  # the network's own: loss, latency, ids
        self.peers: dict[bytes, SimPeer] = {}
        self.events: list[tuple[float, bytes, MemberChanged]] = []  # (time, observer, change)
        self.dropped: Counter = Counter()  # datagrams lost, by cause
        self.delivered = 0
        self._by_address: dict[str, bytes] = {}
        self._group: dict[bytes, int] | None = None
        self._queue: list[tuple] = []
        self._counter = 0

    # --- peers -------------------------------------------------------------------

    def add(self, name: str | None = None, *, meta: dict | None = None, seeds: Iterable[str] = ()) -> bytes:
        """A new running peer; it joins through ``seeds`` (addresses) if any."""
        i = len(self.peers)
        pid = self.rng.randbytes(16)
        name = name or f"peer-{i}"
        address = f"tcp://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:{PORT}"
        secret = self.rng.randbytes(32)
        credential = hashlib.blake2b(pid, key=b"authority", digest_size=32).digest()
        credential = (credential * (self.credential_bytes // 32 + 1))[: self.credential_bytes]
        peer = SimPeer(pid, name, address, secret, credential, swim=None)  # type: ignore[arg-type]
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

    # --- signing (the simulated authority) --------------------------------------------

    def verify_record(self, record: MemberRecord) -> bool:
        peer = self.peers.get(record.peer_id)
        if peer is None or record.credential != peer.credential:
            return False
        return record.signature == _mac(peer.secret, record.signed_payload())

    def forge_record(self, pid: bytes, **fields) -> MemberRecord:
        """A record about ``pid`` signed by someone else: ``verify_record`` refuses it."""
        peer = self.peers[pid]
        base = {
            "peer_id": pid,
            "incarnation": 99,
            "name": peer.name,
            "addresses": ("tcp://6.6.6.6:7411",),
            "credential": peer.credential,
        }
        base.update(fields)
        return MemberRecord.create(sign=lambda b: _mac(b"attacker", b), **base)

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

    def view(self, observer: bytes, target: bytes) -> MemberView | None:
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

    def changes(self, *, target: bytes | None = None, new: Status | None = None) -> list[tuple[float, bytes, MemberChanged]]:
        return [
            e for e in self.events if (target is None or e[2].peer_id == target) and (new is None or e[2].new is new)
        ]

    # --- the shell's job ---------------------------------------------------------------

    def _new_swim(self, peer: SimPeer, meta: dict) -> Swim:
        own = MemberRecord.create(
            peer_id=peer.peer_id,
            name=peer.name,
            addresses=(peer.address,),
            meta=meta,
            credential=peer.credential,
            sign=lambda b, s=peer.secret: _mac(s, b),
        )
        return Swim(
            own,
            self.cfg,
            now=self.now,
            rng=random.Random(self.rng.getrandbits(64)),
            sign=lambda b, s=peer.secret: _mac(s, b),
            verify_record=self.verify_record,
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
        dst = self._by_address.get(fx.addresses[0]) if fx.addresses else fx.peer_id
        if dst is None or dst not in self.peers:
            self.dropped["unroutable"] += 1
            return
        if self._group is not None:
            group = self._group.get(peer.peer_id)
            if group is None or group != self._group.get(dst):
                self.dropped["partition"] += 1
                return
        if self.loss and self.rng.random() < self.loss:
            self.dropped["loss"] += 1
            return
        delay = self.latency_s + self.rng.uniform(0, self.jitter_s)
        self._push(self.now + delay, 1, peer.peer_id, dst, fx.data)


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(payload, key=secret, digest_size=32).digest()
