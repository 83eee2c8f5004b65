"""The thin async shell that runs the pure SWIM core (``mesh.gossip.swim.Swim``) over the
peer's signed RPC: gossip datagrams travel as one-way ``cast``s named ``gossip``.

It owns: a pool of datagram connections to other members (one DEALER per address), the
timer loop that calls ``Swim.tick`` when the core asks, the refresh of this peer's load
(read every ``gossip_interval_s`` and handed to ``Swim.update_own_load``: it travels
outside the signed record) and of its capabilities (the record is re-signed only when
they change, ``needs_resign``), checking member records (the owner's signature against
the key in its certificate from this mesh's authority), hints from discovery (mDNS,
``--join`` seeds, remembered peers) turned into joins, and remembering the addresses of
members across restarts. Policy stays in the core.

Every datagram connection is CurveZMQ-encrypted (with ``transport``): the key expected
at an address comes from ``keybook`` (``mesh.rpc.keybook``), which this shell teaches the
keys of verified member records and of hints that carry one. A datagram to an address
with no known key is not sent (counted in ``no_transport_key``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import zmq.asyncio

from mesh.clock import SYSTEM, Clock
from mesh.discovery.hints import Hint, Source
from mesh.discovery.seeds import RememberedPeers
from mesh.errors import MeshError
from mesh.gossip.config import GossipConfig
from mesh.gossip.effects import MemberChanged, Send
from mesh.gossip.record import MemberRecord
from mesh.gossip.swim import Swim
from mesh.gossip.view import MemberView, PeerMeta, needs_resign, read_meta, with_load
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.keys import Identity, load_public_raw, peer_id_text, verify
from mesh.identity.transport import TransportKeys, key_text
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.faults import FaultInjector
from mesh.rpc.keybook import KeyBook, KeySource
from mesh.rpc.server import CallContext, Method, oneway, unary
from mesh.rpc.tasks import Background
from mesh.rpc.zap import CurveClient

log = logging.getLogger("mesh.gossip.service")

GOSSIP_METHOD = "gossip"
MAX_POOL = 512  # datagram connections kept; the least recently used is closed past this
REMEMBER_EVERY_S = 30.0


class Membership:
    def __init__(
        self,
        *,
        identity: Identity,
        name: str,
        certificate: bytes,
        addresses: list[str],
        verifier: CertificateVerifier,
        codec: FrameCodec,
        ctx: zmq.asyncio.Context,
        cfg: GossipConfig,
        meta: Callable[[], PeerMeta],
        remembered: RememberedPeers | None = None,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
        faults: FaultInjector | None = None,
        transport: TransportKeys | None = None,
        keybook: KeyBook | None = None,
        successor: Callable[[str], str] | None = None,  # peer id -> the id it goes by now (mesh rotate)
    ) -> None:
        self.identity = identity
        self.transport = transport  # None: plain connections (in-process tests of the core only)
        self.keybook = keybook if keybook is not None else KeyBook()
        self.successor = successor
        self.no_transport_key = 0
        self.faults = faults
        self.addresses = list(addresses)
        self.verifier = verifier
        self.codec = codec
        self._ctx = ctx
        self.cfg = cfg
        self._meta = meta
        self._clock = clock
        self.remembered = remembered
        now = clock()
        self._signed_meta = meta()  # what this peer's record says; load travels apart from it
        own = MemberRecord.create(
            peer_id=identity.peer_id, name=name, addresses=tuple(addresses), meta=self._signed_meta.to_wire(),
            credential=certificate, sign=identity.sign,
        )
        self.swim = Swim(
            own, cfg, now=now, rng=rng or random.Random(), sign=identity.sign, verify_record=self._verify_record
        )
        self.swim.update_own_load(self._signed_meta.load.running, self._signed_meta.load.waiting, now)
        self._pool: dict[str, tuple[RpcClient, bytes | None]] = {}
        self._wake = asyncio.Event()
        self._background = Background("gossip")  # the tick and meta loops, sends and closes under way
        self.rejected_records = 0
        self.revoked: set[bytes] = set()  # peer ids the mesh authority revoked (mesh.identity.revocation_service)
        self.listeners: list[Callable[[MemberChanged], None]] = []  # told of every status change

    # -- seams for the peer -------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        return {GOSSIP_METHOD: oneway(self._on_gossip), "members": unary(self._on_members)}

    def hint(self, hint: Hint) -> None:
        """An address discovery found: join through it unless it is a live member already."""
        if hint.peer_id and hint.peer_id == self.identity.peer_id_text:
            return
        if hint.transport_key is not None:
            for address in (hint.address, *hint.alternates):
                self.keybook.learn(address, hint.transport_key, KeySource.HINT)
        known = {a for m in self.swim.members() if m.status.value in ("alive", "suspect") for a in m.addresses}
        if hint.address in known:
            return
        self._apply(self.swim.join([hint.address], self._clock()))

    async def start(self, seeds: list[str]) -> None:
        hints = list(self.remembered.hints()) if self.remembered else []
        for h in hints:
            if h.transport_key is not None:
                self.keybook.learn(h.address, h.transport_key, KeySource.HINT)
        addresses = list(dict.fromkeys([*seeds, *(h.address for h in hints)]))
        await self._background.start(tick=self._tick_loop, meta=self._meta_loop)
        if addresses:
            self._apply(self.swim.join(addresses, self._clock()))

    async def stop(self, *, announce_leave: bool = True, leave_meta: PeerMeta | None = None) -> None:
        """Stop gossiping; first tell the mesh this peer left (with ``leave_meta`` in its
        last record when given)."""
        if announce_leave and not self.swim.left:
            self._apply(self.swim.leave(self._clock(), meta=leave_meta.to_wire() if leave_meta else None))
            await asyncio.sleep(0.2)  # let the "left" news leave the sockets (real time: this is I/O)
        await self._background.close()
        self._remember()
        for client, _ in self._pool.values():
            await client.close()
        self._pool.clear()

    @property
    def running(self) -> bool:
        """Its loops run (False before start, after stop, or when one of them died)."""
        return self._background.running and all(not t.done() for t in self._background.loops.values())

    def expel(self, peer_id: bytes) -> None:
        """Its certificate was revoked: declare it dead now and show it as revoked."""
        self.revoked.add(peer_id)
        self._apply(self.swim.expel(peer_id, self._clock()))

    def update_credential(self, certificate: bytes) -> None:
        """Present a renewed certificate in this peer's member record."""
        self._apply(self.swim.update_own_credential(certificate, self._clock()))

    def live_addresses(self) -> dict[bytes, str]:
        """Where to reach each other alive member (its first address), by peer id."""
        return {
            m.peer_id: m.addresses[0] for m in self.swim.members()
            if not m.is_self and m.status.value == "alive" and m.addresses and m.peer_id not in self.revoked
        }

    def cast(self, address: str, method: str, args: dict) -> None:
        """A one-way message to ``address`` over the gossip connections (best effort)."""
        self._spawn(self._client(address).cast(method, args))

    def rtts(self) -> dict[str, float]:
        """Measured round trips to members (seconds), by peer id text."""
        return {peer_id_text(pid): rtt for pid, rtt in self.swim.rtts.items()}

    def view(self) -> list[MemberView]:
        """Every member as this peer sees it now (itself first), metas parsed and checked."""
        now = self._clock()
        out = []
        for m in self.swim.members():
            peer_id = peer_id_text(m.peer_id)
            meta, problem = read_meta(m.meta)
            if meta is not None and m.load is not None:  # fresher than the signed record's
                meta = with_load(meta, m.load.running, m.load.waiting)
            key = self._certified_key(m.peer_id)  # its certificate's CurveZMQ key: what a caller must dial
            now_id = self.successor(peer_id) if self.successor is not None else None
            out.append(MemberView(
                peer_id=peer_id,
                name=m.name,
                state=m.status.value,
                incarnation=m.incarnation,
                addresses=tuple(m.addresses),
                meta=meta,
                meta_problem=problem,
                is_self=m.is_self,
                last_heard_s=None if m.last_heard is None else max(0.0, now - m.last_heard),
                since_s=max(0.0, now - m.since),
                transport=key_text(key) if key is not None else None,
                revoked=m.peer_id in self.revoked,
                replaced_by=now_id if now_id and now_id != peer_id else None,  # it rotated its keys (mesh rotate)
                load_heard_at=m.load_heard_at,
            ))
        return out

    # -- inbound ------------------------------------------------------------------------

    async def _on_gossip(self, args: dict, ctx: CallContext) -> None:
        data = args.get("d")
        if not isinstance(data, bytes):
            raise MeshError("gossip datagram without bytes")
        # where the sender says it listens (signed with its envelope): replies go there
        reply_to = args.get("a")
        if not (isinstance(reply_to, str) and reply_to.startswith("tcp://") and len(reply_to) <= 128):
            reply_to = None
        self._apply(self.swim.receive(ctx.sender, data, self._clock(), sender_address=reply_to))

    async def _on_members(self, args: dict, ctx: CallContext) -> dict:
        faults = {"dropped": self.faults.dropped, "passed": self.faults.passed} if self.faults else None
        return {
            "members": [m.to_wire() for m in self.view()], "stats": self.swim.stats.snapshot(), "rejected_records": self.rejected_records,
            "faults": faults,
        }

    def _verify_record(self, record: MemberRecord) -> bool:
        """The owner's signature, by the key its certificate (this mesh's authority) names."""
        try:
            cert = self.verifier.verify(record.credential, now=self._clock())
        except MeshError:
            self.rejected_records += 1
            return False
        if cert.peer_id != record.peer_id:
            self.rejected_records += 1
            return False
        ok = verify(load_public_raw(cert.peer_public), record.signature, record.signed_payload())
        if not ok:
            self.rejected_records += 1
        elif cert.curve_public and record.peer_id != self.identity.peer_id:
            for address in record.addresses:  # the owner signed these; its certificate names the key
                self.keybook.learn(address, cert.curve_public, KeySource.CERTIFIED, issued_at=cert.issued_at)
        return ok

    # -- outbound -----------------------------------------------------------------------

    def _apply(self, effects: list) -> None:
        for fx in effects:
            if isinstance(fx, Send):
                self._send(fx)
            elif isinstance(fx, MemberChanged):
                log.info(
                    "member %s (%s): %s -> %s (incarnation %d)", fx.name, peer_id_text(fx.peer_id)[:12],
                    fx.old.value if fx.old else "new", fx.new.value if fx.new else "gone", fx.incarnation,
                )
                for listener in self.listeners:
                    listener(fx)
        self._wake.set()

    def _send(self, fx: Send) -> None:
        for address in fx.addresses[:1]:
            delay = self.faults.decide() if self.faults else 0.0
            if delay is None:
                continue  # the fault layer lost it
            client = self._client(address, fx.peer_id)
            if client is None:
                self.no_transport_key += 1
                continue
            send = client.cast(GOSSIP_METHOD, {"d": fx.data, "a": self.addresses[0]})
            self._spawn(send if not delay else self._after(delay, send))

    async def _after(self, delay_s: float, coro) -> None:
        """A send the fault layer delays (simulated latency: on this peer's clock)."""
        await self._clock.sleep(delay_s)
        await coro

    def _spawn(self, coro) -> None:
        self._background.spawn(coro)

    def _client(self, address: str, peer_id: bytes | None = None) -> RpcClient | None:
        """The datagram connection to ``address`` (where ``peer_id`` is, when known); None
        when no transport key is known for it. A known peer's certificate names its key,
        which covers a member that came back on an address no record has taught yet."""
        curve = None
        if self.transport is not None:
            key = (self._certified_key(peer_id) if peer_id is not None else None) or self.keybook.key_for(address)
            if key is None:
                return None
            curve = CurveClient(self.transport, key)
        entry = self._pool.pop(address, None)
        if entry is not None and entry[1] != (curve.server_public if curve else None):
            self._spawn(entry[0].close())  # the key at this address changed: reconnect
            entry = None
        if entry is None:
            client = RpcClient(codec=self.codec, endpoint=address, ctx=self._ctx, datagram=True, curve=curve)
            client.connect()
            entry = (client, curve.server_public if curve else None)
            if len(self._pool) >= MAX_POOL:
                oldest_address, (oldest, _) = next(iter(self._pool.items()))
                self._pool.pop(oldest_address, None)
                self._spawn(oldest.close())
        self._pool[address] = entry  # most recently used last
        return entry[0]

    async def _tick_loop(self) -> None:
        while True:
            now = self._clock()
            self._apply(self.swim.tick(now))
            self._wake.clear()
            delay = min(max(self.swim.next_tick_at - self._clock(), 0.005), 0.25)
            await self._clock.wait(self._wake, delay)

    async def _meta_loop(self) -> None:
        last_remember = self._clock()
        while True:
            await self._clock.sleep(self.cfg.gossip_interval_s)
            meta, now = self._meta(), self._clock()
            self._apply(self.swim.update_own_load(meta.load.running, meta.load.waiting, now))
            if needs_resign(self._signed_meta, meta):
                self._signed_meta = meta
                self._apply(self.swim.update_own_meta(meta.to_wire(), now))
            if self._clock() - last_remember >= REMEMBER_EVERY_S:
                last_remember = self._clock()
                self._remember()

    def _remember(self) -> None:
        if self.remembered is None:
            return
        now = self._clock()
        hints = [
            Hint(address=a, source=Source.GOSSIP, seen_at=now, peer_id=peer_id_text(m.peer_id),
                 transport_key=self._certified_key(m.peer_id))
            for m in self.swim.members() if not m.is_self and m.status.value == "alive" for a in m.addresses[:1]
        ]
        try:
            if self.remembered.merge(hints):
                self.remembered.save()
        except (MeshError, OSError) as e:
            log.warning("could not remember peers: %s", e)

    def _certified_key(self, peer_id: bytes) -> bytes | None:
        cert = self.verifier.certificate_for(peer_id)
        return cert.curve_public if cert is not None and cert.curve_public else None

