"""A TCP byte stream carried between two members inside CurveZMQ (frames and grants:
``mesh.rpc.tunnel_wire``).

Issue 16 uses it for llama.cpp's ggml RPC protocol, which has no authentication and no
encryption and so never listens on anything but loopback: the borrower's model process
connects to a ``TunnelPort`` on its own loopback, the port carries the stream to the
lender's ``TunnelServer`` over the mesh's transport, and the server connects to the
ggml RPC server on the lender's loopback.

Both ends run one thread each (a ``zmq.Poller`` over the ZeroMQ socket and the TCP
sockets), with a ZeroMQ context of their own: the tunnel's traffic is many small
messages on a latency-bound path (a few per generated token), kept off the peer's event
loop. The server's context has its own ZAP handler (one per context): it refuses the
CurveZMQ key of a revoked member at the handshake, and names every other client's key,
which a grant must match.

Liveness: ZeroMQ reconnects silently, so a lender that died would leave the model
process waiting forever for an answer. The port pings every ``ping_s``; either end
closes a stream that heard nothing from the other side for ``dead_s``, and the model
process sees its socket close (ggml's RPC client then aborts: the engine's supervisor
takes it from there).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85

from mesh.errors import MeshError
from mesh.identity.transport import KEY_BYTES, TransportKeys
from mesh.rpc import tunnel_wire as w
from mesh.rpc.zap import ZAP_DOMAIN, ZAP_ENDPOINT, user_key

log = logging.getLogger("mesh.rpc.tunnel")

READ_BYTES = 1 << 20
PING_S = 2.0
DEAD_S = 10.0
OPEN_TIMEOUT_S = 10.0


class TunnelError(MeshError):
    """A tunnel could not be set up."""


def _tcp_send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _tcp_read(sock: socket.socket) -> bytes:
    """What a socket the poller found readable has (b"" at its end or on an error).
    TCP sockets stay blocking: reads happen only when the poller says there is
    something, and a send waits for room (ggml RPC is request then answer, so the other
    end is reading)."""
    try:
        return sock.recv(READ_BYTES)
    except OSError:
        return b""


class _Wake:
    """Wakes a poller thread from another thread."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def poke(self) -> None:
        try:
            self.w.send(b"x")
        except OSError:
            pass

    def drain(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.r.close()
        self.w.close()


@dataclass
class TunnelStats:
    opened: int = 0
    closed: int = 0
    bytes_in: int = 0  # from the ZeroMQ side
    bytes_out: int = 0  # to the ZeroMQ side
    frames_in: int = 0
    frames_out: int = 0
    refused: Counter = field(default_factory=Counter)  # reason -> count

    def to_dict(self) -> dict:
        return {"opened": self.opened, "closed": self.closed, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "frames_in": self.frames_in, "frames_out": self.frames_out, "refused": dict(self.refused)}


# --- the lender's end ---------------------------------------------------------------


@dataclass
class _Stream:
    rid: bytes
    tcp: socket.socket
    grant: w.Grant
    heard_at: float


class TunnelServer:
    """Accepts tunnel streams from members holding a grant, each connected on to
    ``127.0.0.1:target_port``."""

    def __init__(
        self,
        keys: TransportKeys,
        *,
        target_port: int,
        refuse_key: Callable[[bytes], bool] = lambda key: False,
        grants: w.Grants | None = None,
        clock: Callable[[], float] = time.monotonic,
        dead_s: float = DEAD_S,
    ) -> None:
        self._keys = keys
        self.target_port = target_port
        self._refuse_key = refuse_key
        self._grants = grants if grants is not None else w.Grants()
        self._lock = threading.Lock()  # the grants: written by the peer's loop, read by the thread
        self._clock = clock
        self.dead_s = dead_s
        self.stats = TunnelStats()
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._zap: zmq.Socket | None = None
        self._wake = _Wake()
        self._streams: dict[bytes, _Stream] = {}
        self._by_fd: dict[int, bytes] = {}
        self._to_close: list[bytes] = []  # keys whose streams must close (revoked)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.port: int | None = None

    # grants, from any thread
    def grant(self, key: bytes, holder: str, nbytes: int, *, expires_at: float | None = None) -> w.Grant:
        with self._lock:
            return self._grants.grant(key, holder, nbytes, expires_at=expires_at)

    def release(self, token: bytes) -> w.Grant | None:
        with self._lock:
            g = self._grants.release(token)
        if g is not None:
            self._close_key(g.key)
        return g

    def revoke_key(self, key: bytes) -> int:
        """A member lost its place (revoked, or declared dead): its grants go and its
        streams close. How many grants went."""
        with self._lock:
            gone = self._grants.revoke_key(key)
        self._close_key(key)
        return len(gone)

    def grants(self) -> list[w.Grant]:
        with self._lock:
            return self._grants.live(self._clock())

    def reserved(self) -> int:
        with self._lock:
            return self._grants.reserved(self._clock())

    def _close_key(self, key: bytes) -> None:
        with self._lock:
            self._to_close.append(key)
        self._wake.poke()

    @property
    def streams(self) -> int:
        return len(self._streams)

    def start(self, host: str, port: int = 0) -> int:
        """Bind on ``host`` (the address the peer's RPC binds) and serve; the port."""
        self._ctx = zmq.Context()
        zap = self._ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        self._zap = zap
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._keys.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        try:
            if port:
                sock.bind(f"tcp://{host}:{port}")
                self.port = port
            else:
                self.port = sock.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as e:
            sock.close(0)
            zap.close(0)
            self._ctx.term()
            raise TunnelError(f"cannot bind the tunnel on {host}: {e.strerror}") from e
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="tunnel-server", daemon=True)
        self._thread.start()
        return self.port

    def close(self) -> None:
        self._stop = True
        self._wake.poke()
        if self._thread is not None:
            self._thread.join(5)
        for s in list(self._streams.values()):
            s.tcp.close()
        self._streams.clear()
        for sock in (self._sock, self._zap):
            if sock is not None:
                sock.close(0)
        if self._ctx is not None:
            self._ctx.term()
        self._wake.close()

    # --- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must not pass silently: the streams close, the log says why
            log.exception("the tunnel server stopped")

    def _loop(self) -> None:
        assert self._sock is not None and self._zap is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._wake.r, zmq.POLLIN)
        registered: set[int] = set()
        while not self._stop:
            for fd in set(self._by_fd) - registered:
                poller.register(fd, zmq.POLLIN)
                registered.add(fd)
            for fd in registered - set(self._by_fd):
                poller.unregister(fd)
                registered.discard(fd)
            events = dict(poller.poll(500))
            now = self._clock()
            if self._wake.r.fileno() in events:  # a plain socket polls as its fd
                self._wake.drain()
            with self._lock:
                keys, self._to_close = self._to_close, []
            for key in keys:
                for rid in [r for r, s in self._streams.items() if s.grant.key == key]:
                    self._end(rid, tell=True)
            if self._zap in events:
                self._answer_zap()
            if self._sock in events:
                while True:
                    try:
                        msg = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(msg, now)
            for fd, rid in list(self._by_fd.items()):
                if fd in events:
                    self._pump(rid)
            for rid, s in list(self._streams.items()):
                if now - s.heard_at > self.dead_s:
                    log.info("tunnel stream of %s silent for %.0f s: closed", s.grant.holder, now - s.heard_at)
                    self._end(rid, tell=True)

    def _answer_zap(self) -> None:
        msg = self._zap.recv_multipart()
        if len(msg) < 7:
            self._zap.send_multipart([b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"malformed", b"", b""])
            return
        version, request_id, _domain, _address, _identity, mechanism, *creds = msg
        if version != b"1.0" or mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != KEY_BYTES:
            self.stats.refused["not_curve"] += 1
            self._zap.send_multipart([b"1.0", request_id, b"400", b"CURVE only", b"", b""])
        elif self._refuse_key(creds[0]):
            self.stats.refused["revoked"] += 1
            self._zap.send_multipart([b"1.0", request_id, b"400", b"revoked", b"", b""])
        else:
            self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", z85.encode(creds[0]), b""])

    def _send(self, rid: bytes, kind: bytes, payload: bytes = b"") -> bool:
        try:
            self._sock.send_multipart([rid, kind, payload], zmq.NOBLOCK)
        except zmq.ZMQError:  # the connection is gone (ROUTER_MANDATORY)
            return False
        self.stats.frames_out += 1
        self.stats.bytes_out += len(payload) if kind == w.DATA else 0
        return True

    def _refuse(self, rid: bytes, reason: str, message: str) -> None:
        self.stats.refused[reason] += 1
        log.info("tunnel: refused (%s): %s", reason, message)
        self._send(rid, w.REFUSED, message.encode()[: w.MAX_REASON])

    def _on_message(self, msg: list, now: float) -> None:
        if len(msg) < 2:
            self.stats.refused["bad_shape"] += 1
            return
        rid = msg[0].bytes
        key = user_key(msg[1])
        try:
            frame = w.parse([f.bytes for f in msg[1:]])
        except w.TunnelFrameError as e:
            self._refuse(rid, e.reason, str(e))
            if rid in self._streams:
                self._end(rid, tell=True)
            return
        self.stats.frames_in += 1
        stream = self._streams.get(rid)
        if frame.kind == w.OPEN:
            self._open(rid, key, frame.payload, now)
        elif stream is None:
            if frame.kind not in (w.CLOSE, w.PING):
                self._refuse(rid, "no_stream", "no open tunnel stream on this connection; open one with a grant")
            else:
                self._send(rid, w.CLOSE)
        elif key is None or key != stream.grant.key:
            self._refuse(rid, "bad_key", "this frame came over another transport key than the stream's grant")
        elif frame.kind == w.DATA:
            stream.heard_at = now
            self.stats.bytes_in += len(frame.payload)
            if not _tcp_send(stream.tcp, frame.payload):
                self._end(rid, tell=True)
        elif frame.kind == w.PING:
            stream.heard_at = now
            self._send(rid, w.PONG)
        elif frame.kind == w.CLOSE:
            self._end(rid, tell=False)
        else:
            self._refuse(rid, "unexpected", f"a server does not take {frame.kind.decode()} frames")

    def _open(self, rid: bytes, key: bytes | None, token: bytes, now: float) -> None:
        if rid in self._streams:
            self._refuse(rid, "already_open", "a stream is already open on this connection")
            return
        with self._lock:
            grant = self._grants.check(token, key, now)
        if grant is None:
            self._refuse(rid, "bad_grant", "no live grant for this token and transport key; ask for one with "
                         "lend.reserve")
            return
        try:
            tcp = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError as e:
            self._refuse(rid, "target_down", f"the ggml RPC server on this lender is not answering: {e}")
            return
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp.settimeout(None)
        self._streams[rid] = _Stream(rid, tcp, grant, now)
        self._by_fd[tcp.fileno()] = rid
        self.stats.opened += 1
        self._send(rid, w.OPENED)
        log.info("tunnel: stream opened for %s", grant.holder)

    def _pump(self, rid: bytes) -> None:
        s = self._streams.get(rid)
        if s is None:
            return
        data = _tcp_read(s.tcp)
        if not data:
            self._end(rid, tell=True)
        elif not self._send(rid, w.DATA, data):
            self._end(rid, tell=False)

    def _end(self, rid: bytes, *, tell: bool) -> None:
        s = self._streams.pop(rid, None)
        if s is None:
            return
        self._by_fd.pop(s.tcp.fileno(), None)
        s.tcp.close()
        self.stats.closed += 1
        if tell:
            self._send(rid, w.CLOSE)


# --- the borrower's end -------------------------------------------------------------


@dataclass
class _Conn:
    tcp: socket.socket
    zsock: zmq.Socket
    opened: bool
    started: float
    heard_at: float
    pinged_at: float


class TunnelPort:
    """A loopback TCP port whose every connection is carried to a lender's
    ``TunnelServer`` at ``endpoint`` (``tcp://HOST:PORT``, whose CurveZMQ public key is
    ``server_public``) and opened there with ``token``."""

    def __init__(
        self,
        endpoint: str,
        server_public: bytes,
        keys: TransportKeys,
        token: bytes,
        *,
        clock: Callable[[], float] = time.monotonic,
        ping_s: float = PING_S,
        dead_s: float = DEAD_S,
    ) -> None:
        self.endpoint = endpoint
        self._server_public = server_public
        self._keys = keys
        self._token = token
        self._clock = clock
        self.ping_s = ping_s
        self.dead_s = dead_s
        self.stats = TunnelStats()
        self.last_refusal: str | None = None
        self._ctx = zmq.Context()
        self._listener: socket.socket | None = None
        self._wake = _Wake()
        self._conns: list[_Conn] = []
        self._poller = zmq.Poller()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.local: str | None = None  # "127.0.0.1:PORT", what the model process connects to

    def start(self) -> str:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(8)
        ls.setblocking(False)
        self._listener = ls
        self.local = f"127.0.0.1:{ls.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, name="tunnel-port", daemon=True)
        self._thread.start()
        return self.local

    @property
    def connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        self._stop = True
        self._wake.poke()
        if self._thread is not None:
            self._thread.join(5)
        for c in self._conns:
            c.tcp.close()
            c.zsock.close(0)
        self._conns.clear()
        if self._listener is not None:
            self._listener.close()
        self._ctx.term()
        self._wake.close()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("the tunnel port to %s stopped", self.endpoint)

    def _loop(self) -> None:
        assert self._listener is not None
        # One poller for the port's life: a connection's sockets are registered when it
        # is accepted (its TCP side once the lender opened the stream) and unregistered
        # when it is dropped, not rebuilt on every pass (every frame).
        self._poller.register(self._listener, zmq.POLLIN)
        self._poller.register(self._wake.r, zmq.POLLIN)
        while not self._stop:
            events = dict(self._poller.poll(250))  # a plain socket polls as its fd
            now = self._clock()
            if self._wake.r.fileno() in events:
                self._wake.drain()
            if self._listener.fileno() in events:
                self._accept(now)
            for c in list(self._conns):
                if c.zsock in events:
                    self._from_tunnel(c, now)
            for c in list(self._conns):
                if c.opened and c.tcp.fileno() in events and c in self._conns:
                    self._from_tcp(c)
            for c in list(self._conns):
                self._keep_alive(c, now)

    def _accept(self, now: float) -> None:
        try:
            tcp, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp.setblocking(True)
        z = self._ctx.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        z.setsockopt(zmq.SNDHWM, 0)
        z.setsockopt(zmq.RCVHWM, 0)
        z.setsockopt(zmq.CURVE_SECRETKEY, self._keys.secret)
        z.setsockopt(zmq.CURVE_PUBLICKEY, self._keys.public)
        z.setsockopt(zmq.CURVE_SERVERKEY, self._server_public)
        z.connect(self.endpoint)
        z.send_multipart([w.OPEN, self._token])
        self._conns.append(_Conn(tcp, z, False, now, now, now))
        self._poller.register(z, zmq.POLLIN)

    def _drop(self, c: _Conn, *, tell: bool) -> None:
        if tell:
            try:
                c.zsock.send_multipart([w.CLOSE, b""], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._poller.unregister(c.zsock)
        if c.opened:
            self._poller.unregister(c.tcp)
        c.tcp.close()
        c.zsock.close(0)
        self._conns.remove(c)
        self.stats.closed += 1

    def _from_tunnel(self, c: _Conn, now: float) -> None:
        while c in self._conns:
            try:
                msg = c.zsock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                frame = w.parse(msg)
            except w.TunnelFrameError as e:
                self.stats.refused[e.reason] += 1
                self._drop(c, tell=True)
                return
            c.heard_at = now
            self.stats.frames_in += 1
            if frame.kind == w.OPENED and not c.opened:
                c.opened = True
                self._poller.register(c.tcp, zmq.POLLIN)
                self.stats.opened += 1
            elif frame.kind == w.DATA and c.opened:
                self.stats.bytes_in += len(frame.payload)
                if not _tcp_send(c.tcp, frame.payload):
                    self._drop(c, tell=True)
            elif frame.kind == w.PONG:
                pass
            elif frame.kind == w.REFUSED:
                self.last_refusal = frame.payload.decode("utf-8", "replace")
                self.stats.refused["by_server"] += 1
                log.warning("tunnel to %s refused: %s", self.endpoint, self.last_refusal)
                self._drop(c, tell=False)
            elif frame.kind == w.CLOSE:
                self._drop(c, tell=False)
            else:
                self.stats.refused["unexpected"] += 1
                self._drop(c, tell=True)

    def _from_tcp(self, c: _Conn) -> None:
        data = _tcp_read(c.tcp)
        if not data:
            self._drop(c, tell=True)
            return
        c.zsock.send_multipart([w.DATA, data])
        self.stats.frames_out += 1
        self.stats.bytes_out += len(data)

    def _keep_alive(self, c: _Conn, now: float) -> None:
        if not c.opened and now - c.started > OPEN_TIMEOUT_S:
            self.last_refusal = f"no answer from the lender's tunnel at {self.endpoint} within {OPEN_TIMEOUT_S:.0f} s"
            log.warning("tunnel: %s", self.last_refusal)
            self._drop(c, tell=False)
        elif c.opened and now - c.heard_at > self.dead_s:
            log.warning("tunnel to %s: nothing heard for %.0f s; the lender is gone", self.endpoint, now - c.heard_at)
            self._drop(c, tell=False)
        elif c.opened and now - c.pinged_at >= self.ping_s:
            c.pinged_at = now
            try:
                c.zsock.send_multipart([w.PING, b""], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

