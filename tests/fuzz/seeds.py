"""Real inputs for the decoder fuzzers, made by the project's own encoders.

Every seed here is something an honest peer really sends: envelopes sealed by
``mesh.rpc.envelope.encode`` with a real Ed25519 identity, certificates signed by
``sign_certificate``, join tokens from ``JoinToken.to_text``, gossip datagrams captured
from a ``SimNetwork`` run (real ``Swim`` instances: pings, acks, ping-reqs, syncs,
alive/suspect/dead news), real ``ask``/route/handover/outcome args. The fuzzers mutate
these (``mutate.py``), so most inputs get past the first checks and exercise the deep
ones.

Deterministic: keys come from fixed bytes and randomness from seeded ``random.Random``,
so a failing example replays exactly (hypothesis stores examples between runs).
"""

from __future__ import annotations

import random
import types
from dataclasses import dataclass, field
from functools import lru_cache
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.config import RpcConfig
from mesh.gossip import GossipConfig
from mesh.gossip import messages as gm
from mesh.identity.certificate import SERIAL_BYTES, mesh_id_for, sign_certificate
from mesh.identity.credentials import CertificateVerifier, MeshKeys
from mesh.identity.keys import Identity
from mesh.identity.peerkeys import PeerKeys, self_credential
from mesh.identity.tokens import JoinToken
from mesh.identity.trust import StaticKeys
from mesh.rpc import envelope
from mesh.rpc.codec import FrameCodec
from mesh.rpc.messages import Call, Cancel, Chunk, Error, Result
from mesh.testing.network import SimNetwork

NOW = 1_800_000_000.0  # the fixed clock of every fuzz target (seconds)
NOW_MS = int(NOW * 1000)


def identity(n: int) -> Identity:
    """A fixed Ed25519 identity (the same on every run)."""
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


AUTHORITY = identity(1)
OTHER_AUTHORITY = identity(2)  # another mesh's authority
SENDER = identity(3)  # a member that the receiver trusts
RECEIVER = identity(4)
STRANGER = identity(5)  # certified by this mesh, but unknown to the receiver until it shows its certificate
OUTSIDER = identity(6)  # certified by another mesh


def certificate(subject: Identity, *, authority: Identity = AUTHORITY, name: str = "peer", serial: int = 7,
                issued_at: int = int(NOW) - 3600, ttl_s: int = 30 * 86400, curve: bytes = b"") -> bytes:
    return sign_certificate(
        authority, peer_public_raw=subject.public_raw, name=name, issued_at=issued_at,
        expires_at=issued_at + ttl_s, serial=bytes([serial]) * SERIAL_BYTES, curve_public=curve,
    ).to_bytes()


def _deterministic_secrets(seed: int):
    rng = random.Random(seed)
    return types.SimpleNamespace(token_bytes=rng.randbytes)


def seal(ident: Identity, kind: str, body: dict, *, now_ms: int = NOW_MS, seed: int = 0) -> bytes:
    """A frame from the real encoder, with its random id and nonce drawn from ``seed``."""
    with mock.patch.object(envelope, "secrets", _deterministic_secrets(seed)):
        return envelope.encode(ident, kind, body, now_ms=now_ms)


def ask_args_seed() -> dict:
    return {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why is the sky blue?"}],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "seed": 42,
        "route": {"peer": "p1", "model": "m0", "session": "s", "local_only": False, "no_escalate": True,
                  "threshold": 0.6},
    }


def route_seed() -> dict:
    return {"peer": "p1", "model": "m0", "session": "s", "local_only": True, "no_escalate": False, "threshold": 0.5}


def handover_seed() -> dict:
    a = ask_args_seed()
    route = a.pop("route")
    return {"job": {"id": "abcdefghijklmnopqrstuvwxyz", "owner": SENDER.peer_id_text, "key": "k-1",
                    "request": a, "route": route, "max_attempts": 5}}


def outcomes_seed() -> dict:
    stats = {"peer": SENDER.peer_id_text, "model": "m0", "confidence": 0.9, "min_token_prob": 0.2,
             "prompt_tokens": 12, "completion_tokens": 5, "finish_reason": "stop", "tokens_per_s": 30.5,
             "time_to_first_token_s": 0.05, "generation_s": 0.2}
    return {"outcomes": [
        {"id": "abcdefghijklmnopqrstuvwxyz", "state": "done", "text": "Rayleigh scattering.", "stats": stats,
         "error": None, "ran_on": SENDER.peer_id_text},
        {"id": "bcdefghijklmnopqrstuvwxyza", "state": "failed", "text": None, "stats": None,
         "error": "generation_failed: engine crashed", "ran_on": RECEIVER.peer_id_text},
    ]}


def envelope_bodies() -> list[tuple[str, dict]]:
    """One real body of each kind, as the RPC layer builds them."""
    call_id = bytes(range(16))
    return [
        ("call", Call("ask", ask_args_seed(), 30_000).to_wire()),
        ("call", Call("ping", {}, None).to_wire()),
        ("call", Call("job.handover", handover_seed(), 5_000).to_wire()),
        ("call", Call("job.result", outcomes_seed(), 5_000).to_wire()),
        ("chunk", Chunk(call_id, 3, {"t": "Rayleigh"}).to_wire()),
        ("result", Result(call_id, outcomes_seed()["outcomes"][0]["stats"]).to_wire()),
        ("error", Error(call_id, "busy", "the model's queue is full").to_wire()),
        ("error", Error(b"", "rejected:unknown_sender", "sender is not trusted").to_wire()),
        ("cancel", Cancel(call_id).to_wire()),
        ("cast", Call("gossip", {"d": b"\x94\x01\x04\x80\x90", "a": "tcp://127.0.0.1:7411"}, None).to_wire()),
    ]


@dataclass
class Corpus:
    frames: list[bytes] = field(default_factory=list)  # sealed by SENDER (trusted by the receiver)
    stranger_frames: list[bytes] = field(default_factory=list)  # sealed by STRANGER (needs its credential)
    payloads: list[bytes] = field(default_factory=list)  # the msgpack payloads of ``frames``
    credentials: list[bytes] = field(default_factory=list)
    certificates: list[bytes] = field(default_factory=list)  # of this mesh, other meshes, expired...
    tokens: list[str] = field(default_factory=list)
    gossip: list[bytes] = field(default_factory=list)  # real Swim datagrams
    records: list[bytes] = field(default_factory=list)  # MemberRecord.to_wire of real records
    args: list[dict] = field(default_factory=list)  # ask args, route, handover, outcomes
    net: SimNetwork | None = None

    @property
    def all_bytes(self) -> list[bytes]:
        return [*self.frames, *self.payloads, *self.certificates, *self.gossip, *self.records,
                *(t.encode() for t in self.tokens)]


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    c = Corpus()
    for i, (kind, body) in enumerate(envelope_bodies()):
        c.frames.append(seal(SENDER, kind, body, seed=i))
        c.stranger_frames.append(seal(STRANGER, kind, body, seed=100 + i))
    c.payloads = [f[envelope.HEADER_BYTES:] for f in c.frames]
    c.certificates = [
        certificate(STRANGER, name="stranger"),
        certificate(SENDER, name="a-longer-name-with-dashes.local", curve=b"\x09" * 32, serial=9),
        certificate(OUTSIDER, authority=OTHER_AUTHORITY, name="outsider"),
        certificate(STRANGER, issued_at=int(NOW) - 90 * 86400, name="expired"),
        certificate(STRANGER, issued_at=int(NOW) + 86400, name="future"),
    ]
    c.credentials = [c.certificates[0], c.certificates[2], self_credential(STRANGER)]
    for n_ep in range(0, 5):
        token = JoinToken.new(
            mesh_id=mesh_id_for(AUTHORITY.public_raw), authority_public=AUTHORITY.public_raw,
            inviter_public=SENDER.public_raw,
            endpoints=[f"tcp://192.168.1.{10 + i}:7411" for i in range(n_ep - 1)] + ["tcp://[fe80::1]:7411"] * (n_ep > 0),
            secret=bytes([n_ep]) * 16, expires_at=int(NOW) + 900,
        )
        c.tokens.append(token.to_text())
    c.gossip, c.records, c.net = _gossip_traffic()
    c.args = [ask_args_seed(), {"route": route_seed()}, handover_seed(), outcomes_seed()]
    return c


class CertifiedAuthority:
    """The simulator's authority interface over the real thing: Ed25519 identities, this
    mesh's certificates (signed by ``AUTHORITY``) as credentials, and records verified as
    ``mesh.gossip.service.Membership`` does (the certificate against the authority, then
    the owner's Ed25519 signature by the key the certificate names). Time is ``NOW``."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._identities: dict[bytes, Identity] = {}
        self._credentials: dict[bytes, bytes] = {}
        self.verifier = CertificateVerifier(AUTHORITY.public_raw)

    def new_identity(self) -> bytes:
        ident = Identity(Ed25519PrivateKey.from_private_bytes(self._rng.randbytes(32)))
        self._identities[ident.peer_id] = ident
        self._credentials[ident.peer_id] = certificate(ident, name=f"p{len(self._identities)}",
                                                       serial=len(self._identities) % 256)
        return ident.peer_id

    def credential(self, pid: bytes) -> bytes:
        return self._credentials[pid]

    def sign_for(self, pid: bytes):
        return self._identities[pid].sign

    def verify_record(self, record) -> bool:
        from mesh.errors import MeshError
        from mesh.identity.keys import load_public_raw, verify

        try:
            cert = self.verifier.verify(record.credential, now=NOW)
        except MeshError:
            return False
        if cert.peer_id != record.peer_id:
            return False
        return verify(load_public_raw(cert.peer_public), record.signature, record.signed_payload())

    def record(self, pid: bytes, *, name: str = "peer", addresses: tuple[str, ...] = ("tcp://10.0.0.1:7411",),
               **fields):
        from mesh.gossip.record import MemberRecord

        return MemberRecord.create(peer_id=pid, name=name, addresses=addresses, credential=self._credentials[pid],
                                   sign=self.sign_for(pid), **fields)


def _gossip_traffic() -> tuple[list[bytes], list[bytes], SimNetwork]:
    """Run a small simulated mesh (real ``Swim`` peers, real certificates and Ed25519
    signatures) and keep a varied sample of what they sent: every message type, with and
    without news, including suspect and dead."""
    net = SimNetwork(seed=11, cfg=GossipConfig.for_tests(), loss=0.05)
    net.authority = CertifiedAuthority(random.Random(12))  # real certificates and Ed25519, not the stand-in MAC
    sent: list[bytes] = []
    original = net._send

    def capture(peer, fx):
        sent.append(fx.data)
        original(peer, fx)

    net._send = capture  # type: ignore[method-assign]
    ids = net.start(5)
    net.run(3.0)
    net.kill(ids[3])  # suspect and dead news, ping-reqs and nacks
    net.run(3.0)
    net.restart(ids[3], via=ids[0])  # refutation at a higher incarnation, sync
    net.run(3.0)
    by_type: dict[str, list[bytes]] = {}
    for data in sent:
        body, news = gm.decode(data, max_bytes=1 << 20, max_news=64, max_entries=4097)
        kinds = tuple(sorted({type(n).__name__ for n in news}))
        by_type.setdefault(f"{gm.type_name(body)}:{kinds}", []).append(data)
    sample = [v for group in by_type.values() for v in group[:3]]
    records = [net.peers[p].swim.own_record.to_wire() for p in ids]
    return sample, records, net


def receiver_codec(*, trusted: bool = True, config: RpcConfig | None = None) -> FrameCodec:
    """The receiving side of the envelope fuzzer: trusts SENDER, learns certified keys of
    this mesh from credentials (like a real peer), fixed clock."""
    config = config or RpcConfig.for_tests()
    verifier = CertificateVerifier(AUTHORITY.public_raw)
    trust = StaticKeys([RECEIVER.public_raw, SENDER.public_raw] if trusted else [RECEIVER.public_raw])
    keys = PeerKeys(MeshKeys(RECEIVER.public_raw, trust=trust, certificates=verifier), certificates=verifier)
    return FrameCodec(RECEIVER, keys, config=config, clock=lambda: NOW, credentials=keys.certified_peer)
