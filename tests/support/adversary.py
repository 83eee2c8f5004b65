"""An attacker's toolkit against real peers over real RPC (tests/test_adversarial.py and
bench/attack_latency.py): raw ZeroMQ sockets, frames sealed with a stolen or foreign
key, forged gossip, garbage, idle TCP connections.

Every RPC port is a CurveZMQ server whose ZAP handler admits any CURVE client, so an
attacker on the LAN who knows a peer's transport public key (gossiped in certificates,
in mDNS hints, in join tokens) completes the handshake with keys of its own
(``lan_attacker``) and then reaches the envelope checks with whatever it sends. That is
how the frame attacks here dial. An attacker that does not speak CURVE at all
(``plaintext_dealer``, ``RawTcp``, ``Slowloris``) never gets a message past ZeroMQ.

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
from mesh.identity.transport import TransportKeys
from mesh.identity.trust import StaticKeys
from mesh.rpc import envelope
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.messages import Call, Error
from mesh.rpc.zap import CurveClient


def lan_attacker(server_public: bytes) -> CurveClient:
    """CURVE client options for an attacker with fresh transport keys of its own that
    knows the target's public key: the handshake succeeds (the ZAP handler admits any
    CURVE client); what it sends is then judged frame by frame."""
    return CurveClient(TransportKeys.generate(), server_public)


def member_curve(peer, server_public: bytes) -> CurveClient:
    """The transport keys of a member (``peer.transport``, the key its certificate
    names): what an honest member, or one whose whole data dir is compromised, dials with."""
    return CurveClient(peer.transport, server_public)


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

    # the version encode() would choose for a payload this size (the body is 3 bytes per level)
    version = 2 if 3 * depth + 100 > envelope.PREHASH_ABOVE else 1
    head_fields = msgpack.packb(
        {"v": version, "k": "call", "id": os.urandom(16), "from": identity.peer_id, "ts": int(time.time() * 1000),
         "n": os.urandom(16)}, use_bin_type=True)
    # the map header says 6 entries; make it 7 and append "b": <deep>
    payload = bytes([head_fields[0] + 1]) + head_fields[1:] + b"\xa1b" + b"\x81\xa1x" * depth + b"\xc0"
    head = envelope.MAGIC + bytes([version]) + identity.peer_id
    return head + identity.sign(envelope.signed_bytes(version, head, payload)) + payload


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


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class RawDealer:
    """A bare DEALER socket: sends whatever parts it is given, reads what comes back.

    ``curve``: the CURVE client options it dials with (see ``lan_attacker``); None dials
    without CURVE, which a mesh peer refuses at the handshake (nothing is delivered)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, *, curve: CurveClient | None,
                 monitor: bool = False) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self.sock)
        self._monitor = self.sock.get_monitor_socket(_HANDSHAKE_FAILED) if monitor else None
        self.sock.connect(endpoint)

    async def handshake_failures(self, *, wait_s: float, until: int | None = None) -> list[int]:
        """The reasons (ZeroMQ's event values) of the handshakes of this socket that failed
        within ``wait_s`` (needs ``monitor=True``); other events (connects, retries) are
        skipped. With ``until``, returns as soon as that reason is seen (a loaded machine
        may take a while to reconnect and fail again)."""
        assert self._monitor is not None
        from zmq.utils.monitor import parse_monitor_message

        failed = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                  zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        out = []
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0 and await self._monitor.poll(int(left * 1000)):
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] in failed:
                out.append(int(event["value"]))
                if until is not None and out[-1] == until:
                    break
        return out

    async def send(self, *parts: bytes) -> None:
        await self.sock.send_multipart(list(parts))

    async def try_send(self, *parts: bytes) -> bool:
        """Send without waiting; False when ZeroMQ has nowhere to queue it (a connection
        whose handshake failed is gone until the next reconnect)."""
        try:
            await self.sock.send_multipart(list(parts), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

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
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self.sock.close(0)


def error_codes(envs) -> list[str]:
    return [Error.from_wire(e.body).code for e in envs if e.kind == "error"]


def _host_port(endpoint: str) -> tuple[str, int]:
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    return host.strip("[]"), int(port)


# A complete ZMTP 3.0 greeting of a client naming the CURVE mechanism (RFC 23/26): the
# server then waits for the client's HELLO command, which a slowloris never sends.
CURVE_GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + b"\x00"
                  + b"\x00" * 31)


class Slowloris:
    """TCP connections to a peer's RPC port that never finish the ZMTP/CURVE handshake:
    some send nothing, some half a greeting, some a whole greeting naming CURVE and then
    no HELLO. Raw sockets: no CURVE key is involved at all."""

    def __init__(self, endpoint: str, n: int) -> None:
        self.socks = []
        for i in range(n):
            s = socket.create_connection(_host_port(endpoint), timeout=5)
            if i % 3 == 1:
                s.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01")  # 9 of the 10 signature bytes
            elif i % 3 == 2:
                s.sendall(CURVE_GREETING)
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


class RawTcp:
    """An attacker that does not speak CURVE (or ZMTP) at all: TCP connections that write
    noise, a NULL-mechanism greeting followed by frames, or a CURVE greeting followed by
    junk instead of a HELLO. ZeroMQ ends each of them before any frame reaches mesh."""

    def __init__(self, endpoint: str, n: int, rng: random.Random) -> None:
        null_greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        self.socks = []
        for i in range(n):
            s = socket.create_connection(_host_port(endpoint), timeout=5)
            k = i % 3
            if k == 0:
                data = rng.randbytes(rng.randint(1, 4096))
            elif k == 1:
                data = null_greeting + rng.randbytes(512)
            else:
                data = CURVE_GREETING + rng.randbytes(512)
            try:
                s.sendall(data)
            except OSError:
                pass  # the peer may already have dropped it
            self.socks.append(s)

    def closed_by_peer(self, wait_s: float) -> int:
        """Connections the peer closed within ``wait_s``."""
        deadline = time.monotonic() + wait_s
        closed: set[int] = set()
        while time.monotonic() < deadline and len(closed) < len(self.socks):
            for i, s in enumerate(self.socks):
                if i in closed:
                    continue
                s.setblocking(False)
                try:
                    while True:  # drain what the peer answered (its greeting, an ERROR command)
                        if s.recv(65536) == b"":
                            closed.add(i)
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(i)
            time.sleep(0.05)
        return len(closed)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def honest_curve(peer, server) -> CurveClient:
    """How a member dials ``server``: its own transport keys, to the key ``server``'s
    certificate names."""
    return member_curve(peer, server.certificate.curve_public)


async def honest_client(ctx, peer, server) -> RpcClient:
    """A member's client (its own key, certificate and transport keys) calling ``server``."""
    client = RpcClient(codec=member_codec(peer, trusts=[server.identity.public_raw]), endpoint=server.endpoint,
                       ctx=ctx, curve=honest_curve(peer, server))
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
    OS thread (its own ZeroMQ context), so the peer's queue never drains while it runs.
    With ``server_public`` each DEALER completes a CURVE handshake with fresh keys of its
    own (``lan_attacker``), so its frames reach the envelope checks."""

    def __init__(self, endpoint: str, frames: list[list[bytes]], *, sockets: int = 4,
                 server_public: bytes | None = None) -> None:
        import threading

        self.endpoint, self.frames, self.n = endpoint, frames, sockets
        self.server_public = server_public
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
            if self.server_public is not None:
                lan_attacker(self.server_public).apply(s)
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
public, secret = zmq.curve_keypair()
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.LINGER, 0)
sock.setsockopt(zmq.SNDTIMEO, 100)
sock.setsockopt(zmq.CURVE_SERVER, 1)  # a CURVE server (no ZAP handler: any CURVE client gets in)
sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, public.decode(), flush=True)
frame = b"MESH\x01" + os.urandom(16) + b"\0" * 80  # an unknown sender's frame
rid = sock.recv_multipart()[0]
while True:
    try:
        sock.send_multipart([rid, frame])
    except zmq.Again:
        pass
"""


class FloodingServer:
    """A hostile peer in its own process: a CURVE ROUTER (``public``: its transport key,
    which the caller dials) that answers the first message it gets with an endless stream
    of frames of an unknown sender, as fast as it can."""

    def __init__(self) -> None:
        import subprocess
        import sys

        from zmq.utils import z85

        self.proc = subprocess.Popen([sys.executable, "-c", _FLOODING_SERVER], stdout=subprocess.PIPE)
        port, public = self.proc.stdout.readline().split()
        self.endpoint = f"tcp://127.0.0.1:{int(port)}"
        self.public = z85.decode(public)

    def __enter__(self) -> "FloodingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(10)
