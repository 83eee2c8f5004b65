"""The RPC client: one ZeroMQ DEALER connection, many concurrent calls multiplexed on it.

Replies are admitted by the same envelope checks as requests (the server must be a key
this client trusts) and routed to their call by ``re``. Every call has a deadline on
this side too; on expiry, or when the caller stops reading a stream, a ``cancel`` goes
to the server so no work keeps running for nobody.

    async with RpcClient(codec=..., endpoint="tcp://127.0.0.1:7411", ctx=ctx) as rpc:
        info = await rpc.call("info", {})
        async with rpc.stream("ask", args) as st:
            async for chunk in st: ...
            final = st.result
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from mesh.errors import Cancelled, DeadlineExceeded, EnvelopeRejected, PeerUnavailable, RpcError, error_from_wire
from mesh.rpc.codec import FrameCodec
from mesh.rpc.envelope import RejectReason, new_id
from mesh.rpc.messages import REPLY_TYPES, Call, Cancel, Chunk, Error, Result
from mesh.rpc.tasks import cancel_and_wait
from mesh.rpc.zap import CurveClient

log = logging.getLogger("mesh.rpc.client")

_MAX_BUFFERED_REPLIES = 4096  # per call; a server cannot make the client buffer without bound


class RpcClient:
    def __init__(
        self,
        *,
        codec: FrameCodec,
        endpoint: str,
        ctx: zmq.asyncio.Context,
        datagram: bool = False,
        watch: bool = False,
        connect_timeout_s: float = 2.0,
        curve: CurveClient | None = None,
    ) -> None:
        self.codec = codec
        # curve: encrypt the connection with CurveZMQ; the server must hold the secret
        # half of curve.server_public, or the handshake (and every call) fails.
        self.curve = curve
        self.endpoint = endpoint
        # datagram: for casts (gossip). Nothing is queued for a peer that is not connected,
        # and little for one that is slow, so a message is sent now or lost, never
        # delivered stale after a reconnect.
        self.datagram = datagram
        # watch: for calls between peers. The connection is monitored: a call to a peer
        # that cannot be reached fails within connect_timeout_s, and a peer that dies or
        # drops off the network (kill -9: the kernel closes its socket; a pulled cable:
        # ZeroMQ heartbeats time out) fails its calls at once instead of at their deadline.
        self.watch = watch
        self.connect_timeout_s = connect_timeout_s
        self._connected = asyncio.Event()
        self._monitor_task: asyncio.Task | None = None
        self._ctx = ctx
        self._sock: zmq.asyncio.Socket | None = None
        self._pending: dict[bytes, asyncio.Queue] = {}
        self._recv_task: asyncio.Task | None = None
        self._failure: Exception | None = None
        self._ready_event = zmq.EVENT_CONNECTED
        self._refused: PeerUnavailable | None = None  # the server's ZAP handler refused our key

    async def __aenter__(self) -> "RpcClient":
        self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.codec.config.max_frame_bytes + 1024)
        if self.curve is not None:
            self.curve.apply(sock)
        if self.datagram:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, 64)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.watch:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            # with CurveZMQ a connection is usable once its handshake succeeded, not when TCP
            # connected: a wrong server key (stale, or the peer rotated) connects and then
            # never completes, and calls must then fail within connect_timeout_s
            ready = zmq.EVENT_HANDSHAKE_SUCCEEDED if self.curve is not None else zmq.EVENT_CONNECTED
            self._ready_event = ready
            monitor = sock.get_monitor_socket(ready | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._monitor_task = asyncio.create_task(self._monitor_loop(monitor), name="rpc-client-monitor")
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            raise PeerUnavailable(f"bad peer address {self.endpoint}: {e.strerror}") from e
        self._sock = sock
        self._recv_task = asyncio.create_task(self._recv_loop(), name="rpc-client-recv")

    async def _monitor_loop(self, monitor) -> None:
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                if event == self._ready_event:
                    self._connected.set()
                    self._refused = None
                elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self._refused = PeerUnavailable(
                        f"the peer at {self.endpoint} refused this peer's transport key: its certificate may have "
                        "been revoked by the mesh authority (see `mesh status` there)")
                    self._fail_all(self._refused)
                elif event == zmq.EVENT_DISCONNECTED:
                    self._connected.clear()
                    self._fail_all(PeerUnavailable(f"lost the connection to the peer at {self.endpoint}"))
        finally:
            monitor.close(0)

    async def close(self) -> None:
        for call_id in list(self._pending):
            await self._send_cancel(call_id)
        self._fail_all(Cancelled("client closed"))
        if self._monitor_task is not None and self._sock is not None:
            self._sock.disable_monitor()
        await cancel_and_wait(self._monitor_task)
        await cancel_and_wait(self._recv_task)
        self._recv_task = None
        if self._sock is not None:
            self._sock.close(linger=100)
            self._sock = None

    async def _recv_loop(self) -> None:
        assert self._sock is not None
        while True:
            # pyzmq completes a recv at once (without yielding) while messages are queued:
            # yield once per frame, so a peer streaming frames at us cannot stall this loop.
            await asyncio.sleep(0)
            parts = await self._sock.recv_multipart(copy=True)
            if len(parts) not in (1, 2):  # frame[, credential]
                self.codec.rejections.count(RejectReason.MALFORMED)
                continue
            try:
                env = self.codec.open(parts[0], parts[1] if len(parts) == 2 else None)  # counts its refusals
            except EnvelopeRejected as e:
                log.debug("refused reply: %s", e)
                continue
            try:
                reply_type = REPLY_TYPES.get(env.kind)
                if reply_type is None:
                    raise EnvelopeRejected(RejectReason.UNKNOWN_KIND, f"a client does not accept {env.kind!r}")
                reply = reply_type.from_wire(env.body)
            except EnvelopeRejected as e:
                self.codec.rejections.count(e.reason)
                log.debug("refused reply: %s", e)
                continue
            if isinstance(reply, Error) and reply.re == b"":
                # the server refused our frames as a whole (not enrolled, clock skew, version)
                self._fail_all(error_from_wire(reply.code, reply.message))
                continue
            queue = self._pending.get(reply.re)
            if queue is None:
                continue  # a late reply to a call we gave up on
            if queue.qsize() >= _MAX_BUFFERED_REPLIES:
                self._pending.pop(reply.re, None)
                queue.put_nowait(Error(reply.re, "overflow", "caller stopped reading; call dropped"))
                continue
            queue.put_nowait(reply)

    def _fail_all(self, exc: Exception) -> None:
        for call_id, queue in list(self._pending.items()):
            queue.put_nowait(exc)
        self._pending.clear()

    async def _start(self, method: str, args: dict[str, Any], timeout_s: float) -> tuple[bytes, asyncio.Queue]:
        if self._sock is None:
            raise RpcError("client is not connected")
        if self.watch and not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
            except TimeoutError:
                if self._refused is not None:
                    raise self._refused from None
                raise PeerUnavailable(f"cannot reach the peer at {self.endpoint}") from None
        call_id = new_id()
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[call_id] = queue
        frame = self.codec.seal("call", Call(method, args, int(timeout_s * 1000)).to_wire(), msg_id=call_id)
        try:
            # bounded: with no usable connection (IMMEDIATE, a handshake that never
            # completes) the send itself would wait for ever
            await asyncio.wait_for(self._sock.send_multipart(self.codec.parts(frame)), timeout_s)
        except TimeoutError:
            self._pending.pop(call_id, None)
            raise PeerUnavailable(f"cannot reach the peer at {self.endpoint} (no connection completed its "
                                  "handshake: is its transport key the one this peer has?)") from None
        return call_id, queue

    async def _send_cancel(self, call_id: bytes) -> None:
        self._pending.pop(call_id, None)
        if self._sock is not None:
            try:
                await self._sock.send_multipart(
                    self.codec.parts(self.codec.seal("cancel", Cancel(call_id).to_wire())), flags=zmq.NOBLOCK
                )
            except zmq.ZMQError:
                pass  # not connected: the server never saw the call, or its deadline ends it

    async def cast(self, method: str, args: dict[str, Any]) -> bool:
        """Send a one-way message; no reply comes. False when it could not be queued."""
        if self._sock is None:
            return False
        frame = self.codec.seal("cast", Call(method, args, None).to_wire())
        try:
            await self._sock.send_multipart(self.codec.parts(frame), flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # the outgoing queue is full (peer unreachable): a lost datagram
            return False
        return True

    async def call(self, method: str, args: dict[str, Any], *, timeout_s: float) -> dict:
        """A unary call. Raises the mapped error, or ``DeadlineExceeded``."""
        async with self.stream(method, args, timeout_s=timeout_s) as st:
            async for _ in st:
                pass
            return st.result or {}

    def stream(self, method: str, args: dict[str, Any], *, timeout_s: float) -> "CallStream":
        return CallStream(self, method, args, timeout_s)


class CallStream:
    """Iterate a call's chunks; ``result`` holds the final reply once iteration ends."""

    def __init__(self, client: RpcClient, method: str, args: dict, timeout_s: float) -> None:
        self._client = client
        self._method = method
        self._args = args
        self._timeout_s = timeout_s
        self._call_id: bytes | None = None
        self._queue: asyncio.Queue | None = None
        self._deadline: float | None = None
        self._done = False
        self.result: dict | None = None

    async def __aenter__(self) -> "CallStream":
        await self._ensure_started()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _ensure_started(self) -> None:
        if self._call_id is None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + self._timeout_s
            self._call_id, self._queue = await self._client._start(self._method, self._args, self._timeout_s)

    def __aiter__(self) -> "CallStream":
        return self

    async def __anext__(self) -> dict:
        await self._ensure_started()
        if self._done:
            raise StopAsyncIteration
        assert self._queue is not None and self._deadline is not None
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                item = await self._queue.get()
        except TimeoutError:
            await self.aclose()
            raise DeadlineExceeded(f"{self._method}: no answer within {self._timeout_s:g}s") from None
        if isinstance(item, Chunk):
            return item.data
        self._done = True
        self._client._pending.pop(self._call_id, None)
        if isinstance(item, Result):
            self.result = item.data
            raise StopAsyncIteration
        if isinstance(item, Error):
            raise error_from_wire(item.code, item.message)
        raise item  # an exception from _fail_all

    async def aclose(self) -> None:
        """Stop the call: if it is still running, the server is told to cancel it."""
        if self._call_id is not None and not self._done:
            self._done = True
            await self._client._send_cancel(self._call_id)
