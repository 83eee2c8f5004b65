"""The methods a peer serves over RPC: ``ask`` (streaming), ``info`` and ``ping``.

Handlers only translate: wire args -> typed request (``mesh.api``), backend output ->
wire chunks and final. Cancelling the call closes the backend stream, which stops
generation within a token.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from mesh import __version__
from mesh.api import final_to_wire, request_from_ask_args, route_from_args
from mesh.inference.backend import Backend, FinalStats, TextChunk
from mesh.inference.coalesce import coalesce
from mesh.rpc.codec import FrameCodec
from mesh.rpc.envelope import PROTOCOL_VERSION
from mesh.rpc.server import CallContext, Final, Method, RpcServer, streaming, unary


class PeerService:
    def __init__(
        self,
        *,
        backend: Backend,
        peer_id: str,
        codec: FrameCodec,
        server: Callable[[], RpcServer | None],
        clock: Callable[[], float] = time.time,
        chunk_window_s: float = 0.05,
        name: str = "",
        mesh: str = "",
        router=None,
        threshold: float = 0.7,
    ) -> None:
        self.router = router
        self.threshold = threshold
        self.name = name
        self.mesh = mesh
        self.backend = backend
        self.chunk_window_s = chunk_window_s
        self.peer_id = peer_id
        self.codec = codec
        self._server = server
        self._clock = clock
        self._started = clock()
        self.answers = 0

    def methods(self) -> dict[str, Method]:
        return {
            "ask": streaming(self.ask), "generate": streaming(self.generate), "info": unary(self.info),
            "ping": unary(self.ping),
        }

    async def ask(self, args: dict[str, Any], ctx: CallContext):
        """A prompt entered at this peer: routed through the mesh (see mesh.router)."""
        from mesh.routing import RouteRequest

        if self.router is None:  # a peer without a mesh view (not started yet): answer here
            async for ev in self.generate(args, ctx):
                yield ev
            return
        request = request_from_ask_args(args)
        route = {"threshold": self.threshold, **route_from_args(args)}
        if route.get("pinned_peer"):
            route["pinned_peer"] = self.router.resolve_peer(route["pinned_peer"])
        events = self.router.ask(request, RouteRequest.for_generation(request, **route))
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    self.answers += 1
                yield ev
        finally:
            await events.aclose()

    async def generate(self, args: dict[str, Any], ctx: CallContext):
        """Generate here, with this peer's own backend (what other peers' routers call)."""
        request = request_from_ask_args(args)
        stream = coalesce(self.backend.stream(request), window_s=self.chunk_window_s)
        try:
            async for item in stream:
                if isinstance(item, TextChunk):
                    if item.text:
                        yield {"t": item.text}
                elif isinstance(item, FinalStats):
                    self.answers += 1
                    yield Final(final_to_wire(item, peer=self.peer_id))
        finally:
            await stream.aclose()

    async def ping(self, args: dict[str, Any], ctx: CallContext) -> dict:
        return {"peer": self.peer_id, "time": self._clock()}

    async def info(self, args: dict[str, Any], ctx: CallContext) -> dict:
        caps = self.backend.capabilities
        server = self._server()
        stats = server.stats if server else None
        return {
            "peer": self.peer_id,
            "name": self.name,
            "mesh": self.mesh,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime_s": self._clock() - self._started,
            "model": {
                "name": caps.model,
                "parameters": caps.parameters,
                "quantisation": caps.quantisation,
                "context_length": caps.context_length,
                "tokens_per_s": caps.tokens_per_s,
                "parallel": caps.parallel,
                "queue_limit": caps.queue_limit,
            },
            "answers": self.answers,
            "rpc": {
                "in_flight": server.in_flight if server else 0,
                "calls_started": stats.calls_started if stats else 0,
                "calls_ok": stats.calls_ok if stats else 0,
                "calls_failed": stats.calls_failed if stats else 0,
                "calls_cancelled": stats.calls_cancelled if stats else 0,
                "errors": dict(stats.by_error) if stats else {},
                "rejections": self.codec.rejections.snapshot(),
                "replay_cache": len(self.codec.replay),
            },
        }
