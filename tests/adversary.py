"""An attacker's toolkit against real peers over real RPC (tests/test_adversarial.py and
bench/attack_latency.py): raw ZeroMQ sockets, frames sealed with a stolen or foreign
key, forged gossip, garbage, idle TCP connections.

Everything here uses the project's own encoders, so a refused frame is refused for the
reason the test names, not because the attacker's tooling is wrong.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import zmq
import zmq.asyncio

from mesh.config import RpcConfig
from mesh.gossip import messages as gm
from mesh.gossip.record import MemberRecord
from mesh.identity.authority import MeshAuthority
from mesh.identity.keys import Identity
from mesh.identity.trust import StaticKeys
from mesh.rpc import envelope
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.messages import Call, Error


def codec_of(identity: Identity, *, credential: bytes | None, trusts: list[bytes] = ()) -> FrameCodec:
    return FrameCodec(identity, StaticKeys(list(trusts)), config=RpcConfig.for_tests(), credential=credential)


def member_codec(peer, *, trusts: list[bytes] = ()) -> FrameCodec:
    """A codec holding a member peer's own key and certificate (a stolen or compromised member)."""
    return codec_of(peer.identity, credential=peer.membership.certificate, trusts=trusts)


def foreign_member() -> tuple[Identity, bytes]:
    """A key with a valid certificate from another mesh's authority."""
    authority = MeshAuthority(Identity.generate())
    ident = Identity.generate()
    return ident, authority.issue(ident.public_raw, "intruder", now=time.time())


def call_frame(codec: FrameCodec, method: str = "ping", args: dict | None = None) -> bytes:
    return codec.seal("call", Call(method, args or {}, 5_000).to_wire())


def tampered(frame: bytes) -> bytes:
    buf = bytearray(frame)
    buf[-1] ^= 0x01  # inside the signed payload
    return bytes(buf)


def nested_payload_frame(identity: Identity, depth: int) -> bytes:
    """A correctly signed frame whose body nests ``depth`` maps deep (built by hand:
    msgpack's packer itself refuses such depths)."""
    import msgpack

    head_fields = msgpack.packb(
        {"v": 1, "k": "call", "id": os.urandom(16), "from": identity.peer_id, "ts": int(time.time() * 1000),
         "n": os.urandom(16)}, use_bin_type=True)
    # the map header says 6 entries; make it 7 and append "b": <deep>
    payload = bytes([head_fields[0] + 1]) + head_fields[1:] + b"\xa1b" + b"\x81\xa1x" * depth + b"\xc0"
    head = envelope.MAGIC + bytes([envelope.PROTOCOL_VERSION]) + identity.peer_id
    return head + identity.sign(envelope.DOMAIN + head + payload) + payload


def garbage_frames(n: int, rng: random.Random) -> list[bytes]:
    """Junk of every shape a sniffing attacker without a key can send."""
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            out.append(rng.randbytes(rng.randint(0, 300)))  # noise
        elif k == 1:
            out.append(b"MESH\x07" + rng.randbytes(100))  # unknown version
        elif k == 2:
            out.append(b"MESE" + rng.randbytes(200))  # bad magic
        else:
            out.append(b"\x00" * rng.randint(1, 84))  # shorter than a header
    return out


def forged_gossip_about(victim_peer_id: bytes, *, signer: Identity, credential: bytes, incarnation: int = 99) -> bytes:
    """A gossip datagram carrying an "alive" record for ``victim`` that ``signer`` made:
    new addresses and a forged name (the state an attacker would like to inject)."""
    record = MemberRecord.create(
        peer_id=victim_peer_id, incarnation=incarnation, name="forged", addresses=("tcp://203.0.113.9:7411",),
        meta={"models": [{"name": "evil", "ctx": 1 << 20, "tps": 1e9}]}, credential=credential, sign=signer.sign,
    )
    return gm.encode(gm.Gossip(), [gm.pack_news(gm.Alive(record))])


def dead_claim(victim_peer_id: bytes, incarnation: int, sender: bytes) -> bytes:
    return gm.encode(gm.Gossip(), [gm.pack_news(gm.Dead(victim_peer_id, incarnation, sender))])


class RawDealer:
    """A bare DEALER socket: sends whatever parts it is given, reads what comes back."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    async def send(self, *parts: bytes) -> None:
        await self.sock.send_multipart(list(parts))

    async def replies(self, codec: FrameCodec, *, wait_s: float) -> list:
        """Envelopes received within ``wait_s`` (opened with ``codec``)."""
        out = []
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            if not await self.sock.poll(int(left * 1000)):
                break
            parts = await self.sock.recv_multipart()
            out.append(codec.open(parts[0], parts[1] if len(parts) > 1 else None))
        return out

    def close(self) -> None:
        self.sock.close(0)


def error_codes(envs) -> list[str]:
    return [Error.from_wire(e.body).code for e in envs if e.kind == "error"]


class Slowloris:
    """TCP connections to a peer's RPC port that never finish the ZMTP handshake: some
    send nothing, some half a greeting."""

    def __init__(self, endpoint: str, n: int) -> None:
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        self.socks = []
        for i in range(n):
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            if i % 2:
                s.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01")  # 9 of the 10 signature bytes
            self.socks.append(s)

    def still_open(self) -> int:
        """Connections the peer has not closed yet."""
        n = 0
        for s in self.socks:
            s.setblocking(False)
            try:
                n += s.recv(64, socket.MSG_PEEK) != b""
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def close(self) -> None:
        for s in self.socks:
            s.close()


async def honest_client(ctx, peer, server) -> RpcClient:
    """A member's client (its own key and certificate) calling ``server``."""
    client = RpcClient(codec=member_codec(peer, trusts=[server.identity.public_raw]), endpoint=server.endpoint,
                       ctx=ctx)
    client.connect()
    return client


async def timed_pings(client: RpcClient, n: int, *, timeout_s: float = 5.0, gap_s: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.call("ping", {}, timeout_s=timeout_s)
        out.append(time.perf_counter() - t0)
        if gap_s:
            await asyncio.sleep(gap_s)
    return out


class FloodThread:
    """A flood that does not stop until told: junk frames from ``sockets`` DEALERs in an
    OS thread (its own ZeroMQ context), so the peer's queue never drains while it runs."""

    def __init__(self, endpoint: str, frames: list[list[bytes]], *, sockets: int = 4) -> None:
        import threading

        self.endpoint, self.frames, self.n = endpoint, frames, sockets
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ctx = zmq.Context()
        socks = []
        for _ in range(self.n):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDTIMEO, 100)
            s.connect(self.endpoint)
            socks.append(s)
        i = 0
        while not self._stop.is_set():
            try:
                socks[i % self.n].send_multipart(self.frames[i % len(self.frames)])
                self.sent += 1
            except zmq.Again:
                pass
            i += 1
        for s in socks:
            s.close(0)
        ctx.term()

    def __enter__(self) -> "FloodThread":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


_FLOODING_SERVER = r"""
import os, sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SNDTIMEO, 100)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
frame = b"MESH\x01" + os.urandom(16) + b"\0" * 80  # an unknown sender's frame
rid = sock.recv_multipart()[0]
while True:
    try:
        sock.send_multipart([rid, frame])
    except zmq.Again:
        pass
"""


class FloodingServer:
    """A hostile peer in its own process: a ROUTER that answers the first message it gets
    with an endless stream of frames of an unknown sender, as fast as it can."""

    def __init__(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _FLOODING_SERVER], stdout=subprocess.PIPE)
        self.endpoint = f"tcp://127.0.0.1:{int(self.proc.stdout.readline())}"

    def __enter__(self) -> "FloodingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(10)
