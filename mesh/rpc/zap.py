"""CurveZMQ on the RPC sockets: the ZAP responder a CURVE server needs, and client options.

ZeroMQ asks a ZAP handler (RFC 27, ``inproc://zeromq.zap.01`` in the socket's context)
about every connection a CURVE server socket completes a handshake with. This one
admits every CURVE client and names the client's public key as the connection's
``User-Id``, so each message the server reads says which transport key it came over.
Admission itself is per frame (``mesh.rpc.server``): a connection whose key no
certificate names may still call the public ``mesh.enrol`` method, so it cannot be
refused at the handshake.

Without a ZAP handler libzmq lets CURVE clients in with no ``User-Id``; the server then
treats every frame as coming over an unknown key (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils import z85

from mesh.errors import MeshError
from mesh.identity.transport import KEY_BYTES, TransportKeys
from mesh.rpc.tasks import cancel_and_wait

log = logging.getLogger("mesh.rpc.zap")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"mesh"


@dataclass(frozen=True)
class CurveClient:
    """What a DEALER needs to reach a CURVE server: its own keys and the server's public key."""

    keys: TransportKeys
    server_public: bytes

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)


def apply_server(sock: zmq.Socket, keys: TransportKeys) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def user_key(frame: zmq.Frame) -> bytes | None:
    """The client's transport key a message came over (its ``User-Id``), or None."""
    try:
        text = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    if not isinstance(text, str) or len(text) != 40:
        return None
    try:
        key = z85.decode(text)
    except ValueError:
        return None
    return key if len(key) == KEY_BYTES else None


class ZapResponder:
    """Answers the context's ZAP requests; one per context (the endpoint is per context)."""

    def __init__(self, ctx: zmq.asyncio.Context, *, refuse: Callable[[bytes], bool] | None = None) -> None:
        """``refuse(client_key)``: True for a CurveZMQ key that must not connect at all (the
        transport key of a revoked member): its handshake fails, nothing it sends is read."""
        self._ctx = ctx
        self._refuse = refuse
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None
        self.handshakes = 0
        self.refused = 0
        self.refused_revoked = 0

    def start(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            sock.close(0)
            raise MeshError(f"cannot start the ZAP handler: {e.strerror} (one CURVE server per ZeroMQ context)") from e
        self._sock = sock
        self._task = asyncio.create_task(self._loop(), name="rpc-zap")

    async def _loop(self) -> None:
        assert self._sock is not None
        while True:
            msg = await self._sock.recv_multipart()
            if len(msg) < 6:  # not a ZAP request; a REP socket must still answer
                await self._sock.send_multipart([b"1.0", b"", b"400", b"malformed ZAP request", b"", b""])
                continue
            version, request_id, _domain, _address, _identity, mechanism, *creds = msg
            if version == b"1.0" and mechanism == b"CURVE" and len(creds) == 1 and len(creds[0]) == KEY_BYTES:
                if self._refuse is not None and self._refuse(creds[0]):
                    self.refused_revoked += 1
                    reply = [b"1.0", request_id, b"400", b"revoked", b"", b""]
                else:
                    self.handshakes += 1
                    reply = [b"1.0", request_id, b"200", b"OK", z85.encode(creds[0]), b""]
            else:  # only CURVE clients reach a mesh server
                self.refused += 1
                reply = [b"1.0", request_id, b"400", b"CURVE only", b"", b""]
            await self._sock.send_multipart(reply)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._sock is not None:
            try:
                self._sock.unbind(ZAP_ENDPOINT)  # inproc: released now, not when the socket is reaped
            except zmq.ZMQError:
                pass
            self._sock.close(0)
            self._sock = None
