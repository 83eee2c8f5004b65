"""The RPC server: a ZeroMQ ROUTER socket serving unary and streaming methods.

Every incoming frame goes through ``FrameCodec.open`` before anything else reads it.
Each admitted call runs as its own task, so many calls from one connection (a DEALER)
are served concurrently; replies are routed back by the connection's routing id and
name the call id in ``re``.

Per call: the server enforces its own deadline (the caller's ``t``, capped by
``max_timeout_s``), stops the handler when the caller sends ``cancel``, and always
answers with exactly one ``result`` or ``error`` (after any ``chunk``s), except to a
caller that cancelled. ``close(grace_s)`` stops taking calls, lets running ones finish
for ``grace_s``, then cancels the rest with a ``cancelled`` error to their callers.

With ``curve`` (this peer's transport keys) the socket is a CurveZMQ server: every
connection is encrypted, and each admitted frame is bound to the transport key its
connection presented (``transport_ok(sender, key)``: the key the sender's certificate
names). A frame that fails the binding is refused and counted as ``bad_transport_key``
unless it calls a public method (enrolment: the joiner has no certificate yet). Attack:
without the binding, a member that receives another member's signed frames could relay
them over its own connection and be answered in its place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from mesh.errors import EnvelopeRejected, MeshError
from mesh.identity.transport import TransportKeys
from mesh.rpc.codec import FrameCodec
from mesh.rpc.config import RpcConfig
from mesh.rpc.envelope import Envelope, RejectReason
from mesh.rpc.messages import Call, Cancel, Chunk, Error, Result
from mesh.rpc.ratelimit import RateLimiter
from mesh.rpc.tasks import cancel_and_wait
from mesh.rpc.zap import ZapResponder, apply_server, user_key

log = logging.getLogger("mesh.rpc.server")

# Reasons worth telling the sender about: an honest but misconfigured caller hits these
# (not enrolled, another mesh, clock skew, old version) and would otherwise wait for its deadline.
_NOTIFY = {
    RejectReason.UNKNOWN_SENDER, RejectReason.STALE_TIMESTAMP, RejectReason.BAD_VERSION, RejectReason.BAD_CREDENTIAL,
    RejectReason.REVOKED,
    RejectReason.BAD_TRANSPORT_KEY,
}


@dataclass(frozen=True)
class CallContext:
    sender: bytes  # verified peer id of the caller
    call_id: bytes
    transport_key: bytes | None = None  # the CurveZMQ key the call came over (None: no CURVE)


@dataclass(frozen=True)
class Final:
    """Yielded last by a streaming handler: becomes the call's ``result``."""

    data: dict


@dataclass(frozen=True)
class Method:
    fn: Callable[[dict, CallContext], Awaitable[dict | None] | AsyncIterator[dict | Final]]
    streaming: bool = False
    oneway: bool = False  # reached by "cast": never answered
    public: bool = False  # callable by a sender whose key is not authenticated (enrolment)


def unary(fn, *, public: bool = False) -> Method:
    return Method(fn, streaming=False, public=public)


def streaming(fn) -> Method:
    return Method(fn, streaming=True)


def oneway(fn) -> Method:
    return Method(fn, oneway=True)


@dataclass
class _Running:
    task: asyncio.Task
    cancel_reason: str | None = None  # set before task.cancel(): "caller" or "shutdown"


@dataclass
class ServerStats:
    calls_started: int = 0
    calls_ok: int = 0
    calls_failed: int = 0
    calls_cancelled: int = 0
    refused_busy: int = 0
    casts_handled: int = 0
    casts_dropped: int = 0
    refused_rate: int = 0  # calls refused: their sender went past its rate limit
    casts_rate_limited: int = 0  # one-way messages dropped for the same reason
    refused_connections: int = 0  # calls refused: too many connections busy at once
    notices_suppressed: int = 0  # refused frames whose sender was not told (notice budget spent)
    by_error: dict[str, int] = field(default_factory=dict)


class RpcServer:
    def __init__(
        self,
        *,
        codec: FrameCodec,
        methods: dict[str, Method],
        config: RpcConfig,
        ctx: zmq.asyncio.Context,
        authenticated: Callable[[bytes], bool] | None = None,
        curve: TransportKeys | None = None,
        transport_ok: Callable[[bytes, bytes | None], bool] | None = None,
        refuse_transport: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.codec = codec
        self.curve = curve
        # CurveZMQ client keys whose handshake fails (revoked members' transport keys)
        self._refuse_transport = refuse_transport
        # Whether a sender's frames may come over a transport key (None: any key).
        self._transport_ok = transport_ok
        self._zap: ZapResponder | None = None
        # Which senders may call non-public methods (None: every admitted sender). A key
        # the peer only holds provisionally (self-asserted, for enrolment) is admitted by
        # the envelope checks but is not authenticated.
        self._authenticated = authenticated
        self._casts: set[asyncio.Task] = set()
        self.methods = dict(methods)
        self.config = config
        self._ctx = ctx
        self._sock: zmq.asyncio.Socket | None = None
        self._calls: dict[tuple[bytes, bytes], _Running] = {}
        self._per_conn: dict[bytes, int] = {}
        self._recv_task: asyncio.Task | None = None
        self._accepting = False
        self.stats = ServerStats()
        self.endpoint: str | None = None
        # per sender (its verified peer id), so one member or a flood of self-asserted
        # keys cannot crowd out the others; time from the codec's clock
        self._call_rate = RateLimiter(rate_per_s=config.calls_per_sender_per_s, burst=config.calls_burst,
                                      max_keys=config.max_senders_tracked)
        self._notice_rate = RateLimiter(rate_per_s=config.notices_per_s, burst=config.notices_burst)
        self._cast_rate = RateLimiter(rate_per_s=config.casts_per_sender_per_s, burst=config.casts_burst,
                                      max_keys=config.max_senders_tracked)

    async def start(self, endpoint: str, *, retry_s: float = 0.0) -> str:
        """Bind and serve. ``retry_s``: keep trying that long while the address is still
        held (a server on this context was just closed, e.g. by ``mesh rotate``:
        ZeroMQ releases a closed socket's endpoints in its own thread, a moment later)."""
        deadline = time.monotonic() + retry_s
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # zmq itself drops (and disconnects) only far-oversize messages; frames between
        # max_frame_bytes and this are read and counted as OVERSIZE by the codec.
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_frame_bytes + 1024)
        # a connection that never completes its handshake (slowloris) is closed after this
        sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, int(self.config.handshake_timeout_s * 1000)))
        if self.curve is not None:
            apply_server(sock, self.curve)
            self._zap = ZapResponder(self._ctx, refuse=self._refuse_transport)
            try:
                await _retrying(self._zap.start, until=deadline, when=lambda e: isinstance(e, MeshError))
            except MeshError:
                sock.close(0)
                raise
        try:
            await _retrying(lambda: sock.bind(endpoint), until=deadline,
                            when=lambda e: isinstance(e, zmq.ZMQError) and e.errno == zmq.EADDRINUSE)
        except zmq.ZMQError as e:
            sock.close(0)
            if self._zap is not None:
                await self._zap.close()
            raise MeshError(
                f"cannot listen on {endpoint}: {e.strerror}; pick another --rpc-port (0 = any free)") from e
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._accepting = True
        self._recv_task = asyncio.create_task(self._recv_loop(), name="rpc-recv")
        return self.endpoint

    @property
    def handshakes_refused(self) -> int:
        """CurveZMQ handshakes refused because the client's key belongs to a revoked member."""
        return self._zap.refused_revoked if self._zap is not None else 0

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def _recv_loop(self) -> None:
        assert self._sock is not None
        while True:
            # pyzmq completes a recv at once (without yielding) while messages are queued,
            # so under a sustained flood this loop would never let admitted calls, casts
            # or timers run: yield to the event loop once per frame.
            await asyncio.sleep(0)
            frames = await self._sock.recv_multipart(copy=False)
            if len(frames) not in (2, 3):  # routing id, frame[, credential]
                self.codec.rejections.count(RejectReason.MALFORMED)
                continue
            rid, frame = frames[0].bytes, frames[1].bytes
            try:
                env = self.codec.open(frame, frames[2].bytes if len(frames) == 3 else None)
                transport_key = user_key(frames[1]) if self.curve is not None else None
                self._check_transport(env, transport_key)
            except EnvelopeRejected as e:
                log.debug("refused frame: %s", e)
                if e.reason in _NOTIFY:
                    # each notice costs a signature: bounded, so a flood of refused frames
                    # cannot make this peer sign without limit (the refusal is still counted)
                    if self._notice_rate.take(b"", now=self.codec.clock()) > 0:
                        self.stats.notices_suppressed += 1
                        continue
                    await self._send(rid, "error", Error(b"", "rejected:" + e.reason.value, str(e)).to_wire())
                continue
            try:
                await self._dispatch(rid, env, transport_key)
            except EnvelopeRejected as e:
                self.codec.rejections.count(e.reason)
                log.debug("refused body: %s", e)
            except Exception:  # a bug here must not stop the peer from serving; it is logged
                log.exception("dispatching a %s failed", env.kind)

    def _check_transport(self, env: Envelope, transport_key: bytes | None) -> None:
        """Refuse (and count) a frame that came over a key its sender's certificate does not name."""
        if self._transport_ok is None or not self._is_authenticated(env.sender):
            return  # an unauthenticated sender reaches only public methods anyway
        if self._transport_ok(env.sender, transport_key):
            return
        if env.kind == "call":
            method = self.methods.get(env.body.get("m")) if isinstance(env.body.get("m"), str) else None
            if method is not None and method.public:
                return  # enrolment: the caller has no certificate yet; the handler sees the key
        self.codec.rejections.count(RejectReason.BAD_TRANSPORT_KEY)
        raise EnvelopeRejected(
            RejectReason.BAD_TRANSPORT_KEY, "the connection's transport key is not the one the sender's certificate names"
        )

    async def _dispatch(self, rid: bytes, env: Envelope, transport_key: bytes | None = None) -> None:
        if env.kind == "cancel":
            running = self._calls.get((rid, Cancel.from_wire(env.body).re))
            if running is not None and not running.task.done():
                running.cancel_reason = "caller"
                running.task.cancel()
            return
        if env.kind == "cast":
            self._start_cast(env, transport_key)
            return
        if env.kind != "call":
            raise EnvelopeRejected(RejectReason.UNKNOWN_KIND, f"a server does not accept {env.kind!r}")
        call = Call.from_wire(env.body)
        key = (rid, env.msg_id)
        if key in self._calls:
            return  # a duplicate id on one connection; the first one stands
        if not self._accepting:
            await self._reply_error(rid, env.msg_id, "unavailable", "peer is shutting down; try again later")
            return
        method = self.methods.get(call.method)
        if method is None or method.oneway:
            await self._reply_error(rid, env.msg_id, "unknown_method", f"no method {call.method!r}")
            return
        if not method.public and not self._is_authenticated(env.sender):
            await self._reply_error(rid, env.msg_id, "unauthenticated", "this peer's mesh has not certified you; join it first")
            return
        if self._call_rate.take(env.sender, now=self.codec.clock()) > 0:
            self.stats.refused_rate += 1
            await self._reply_error(rid, env.msg_id, "busy", "rate limited: too many calls from you; slow down")
            return
        if rid not in self._per_conn and len(self._per_conn) >= self.config.max_connections_busy:
            self.stats.refused_connections += 1
            await self._reply_error(rid, env.msg_id, "busy", "too many connections with calls in flight; try again")
            return
        if self._per_conn.get(rid, 0) >= self.config.max_calls_per_connection:
            self.stats.refused_busy += 1
            await self._reply_error(rid, env.msg_id, "busy", "too many concurrent calls on this connection")
            return
        timeout_s = min(
            (call.timeout_ms / 1000) if call.timeout_ms else self.config.default_timeout_s, self.config.max_timeout_s
        )
        ctx = CallContext(sender=env.sender, call_id=env.msg_id, transport_key=transport_key)
        task = asyncio.create_task(self._run(rid, method, call, ctx, timeout_s), name=f"rpc-call-{call.method}")
        self._calls[key] = _Running(task)
        self._per_conn[rid] = self._per_conn.get(rid, 0) + 1
        self.stats.calls_started += 1

    def _is_authenticated(self, sender: bytes) -> bool:
        return self._authenticated is None or self._authenticated(sender)

    def _start_cast(self, env: Envelope, transport_key: bytes | None = None) -> None:
        call = Call.from_wire(env.body)
        method = self.methods.get(call.method)
        if method is None or not method.oneway or not self._is_authenticated(env.sender):
            self.stats.casts_dropped += 1
            return
        if self._cast_rate.take(env.sender, now=self.codec.clock()) > 0:
            self.stats.casts_rate_limited += 1
            return
        if len(self._casts) >= self.config.max_casts_in_flight:
            self.stats.casts_dropped += 1  # datagram semantics: under overload, drop
            return
        task = asyncio.create_task(self._run_cast(method, call, CallContext(env.sender, env.msg_id, transport_key)))
        self._casts.add(task)
        task.add_done_callback(self._casts.discard)

    async def _run_cast(self, method: Method, call: Call, ctx: CallContext) -> None:
        try:
            await method.fn(call.args, ctx)
            self.stats.casts_handled += 1
        except MeshError as e:
            self.stats.casts_dropped += 1
            log.debug("cast %s refused: %s", call.method, e)
        except Exception:  # a handler bug must not take the peer down
            self.stats.casts_dropped += 1
            log.exception("cast %s failed", call.method)

    async def _run(self, rid: bytes, method: Method, call: Call, ctx: CallContext, timeout_s: float) -> None:
        key = (rid, ctx.call_id)
        try:
            async with asyncio.timeout(timeout_s):
                if method.streaming:
                    final: dict = {}
                    seq = 0
                    agen = method.fn(call.args, ctx)
                    try:
                        async for item in agen:
                            if isinstance(item, Final):
                                final = item.data
                                break
                            await self._send(rid, "chunk", Chunk(ctx.call_id, seq, item).to_wire())
                            seq += 1
                    finally:
                        await agen.aclose()
                else:
                    final = await method.fn(call.args, ctx)
            await self._send(rid, "result", Result(ctx.call_id, final).to_wire())
            self.stats.calls_ok += 1
        except TimeoutError:
            self._count_error("deadline_exceeded")
            await self._send_error(rid, ctx.call_id, "deadline_exceeded", f"no answer within {timeout_s:g}s")
        except asyncio.CancelledError:
            running = self._calls.get(key)
            reason = running.cancel_reason if running else None
            self.stats.calls_cancelled += 1
            if reason == "shutdown":
                await self._send_error(rid, ctx.call_id, "cancelled", "peer is shutting down; retry on another peer")
            elif reason != "caller":
                raise
        except MeshError as e:
            code = getattr(e, "code", "error")
            self._count_error(code)
            await self._send_error(rid, ctx.call_id, code, str(e))
        except Exception as e:  # a handler bug must not take the peer down; the caller is told
            log.exception("method %s failed", call.method)
            self._count_error("internal")
            await self._send_error(rid, ctx.call_id, "internal", f"{type(e).__name__}: {e}")
        finally:
            self._calls.pop(key, None)
            left = self._per_conn.get(rid, 1) - 1
            if left:
                self._per_conn[rid] = left
            else:
                self._per_conn.pop(rid, None)

    def _count_error(self, code: str) -> None:
        self.stats.calls_failed += 1
        self.stats.by_error[code] = self.stats.by_error.get(code, 0) + 1

    async def _reply_error(self, rid: bytes, call_id: bytes, code: str, message: str) -> None:
        self._count_error(code)
        await self._send_error(rid, call_id, code, message)

    async def _send_error(self, rid: bytes, call_id: bytes, code: str, message: str) -> None:
        await self._send(rid, "error", Error(call_id, code, message).to_wire())

    async def _send(self, rid: bytes, kind: str, body: dict[str, Any]) -> None:
        if self._sock is None:
            return
        frame = self.codec.seal(kind, body)
        try:
            await self._sock.send_multipart([rid, *self.codec.parts(frame)])
        except zmq.ZMQError as e:  # the caller went away; nothing to tell it
            log.debug("send to caller failed: %s", e)

    def cancel_all(self) -> None:
        """Cancel every running call now; each caller gets a ``cancelled`` error."""
        for running in list(self._calls.values()):
            if not running.task.done():
                running.cancel_reason = "shutdown"
                running.task.cancel()

    async def close(self, *, grace_s: float = 0.0) -> None:
        """Stop taking calls; give running ones ``grace_s``; cancel the rest, telling callers."""
        self._accepting = False
        if self._calls and grace_s > 0:
            await asyncio.wait([r.task for r in self._calls.values()], timeout=grace_s)
        self.cancel_all()
        if self._calls:
            await asyncio.wait([r.task for r in self._calls.values()], timeout=5)
        await cancel_and_wait(self._recv_task)
        for task in list(self._casts):
            await cancel_and_wait(task)
        if self._sock is not None:
            # give the last replies a moment to leave before the socket goes
            await asyncio.sleep(0.05)
            self._sock.close(linger=200)
            self._sock = None
        if self._zap is not None:
            await self._zap.close()
            self._zap = None


async def _retrying(attempt: Callable[[], object], *, until: float, when: Callable[[Exception], bool]) -> None:
    """Call ``attempt`` until it succeeds, retrying every 50 ms while it fails as ``when``
    says and ``until`` (monotonic) is not reached; then its error stands."""
    while True:
        try:
            attempt()
            return
        except Exception as e:
            if not when(e) or time.monotonic() >= until:
                raise
        await asyncio.sleep(0.05)
