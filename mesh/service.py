"""The methods a peer serves over RPC: ``ask`` (streaming), ``info`` and ``ping``;
``embed`` (routed) and ``embed.here`` (this peer's model) for embeddings.

Handlers only translate: wire args -> typed request (``mesh.api``), backend output ->
wire chunks and final. Cancelling the call closes the backend stream, which stops
generation within a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mesh import __version__, tracing
from mesh.api import final_to_wire, request_from_ask_args, route_args, route_from_args, text_event
from mesh.errors import BackendBusy, InvalidRequest
from mesh.inference.backend import Backend, FinalStats, TextChunk
from mesh.inference.coalesce import coalesce
from mesh.inference.embedding import EMBED_METHOD, EmbeddingRequest, Embeddings, chunked
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
        transport_key: str | None = None,
        jobs=None,
        on_submit: Callable[[], None] | None = None,
        job_sync=None,
        max_open_jobs: int = 10_000,
        certificate_info: Callable[[], dict | None] = lambda: None,
        started_at: float | None = None,
        answers: int = 0,
        memory_pool: Callable[[], dict | None] = lambda: None,
    ) -> None:
        """``memory_pool``: what this peer lends and how its split model is placed
        (issue 16), for ``info``."""
        self.memory_pool = memory_pool
        self.router = router
        self.jobs = jobs
        self.on_submit = on_submit
        self.job_sync = job_sync  # mesh.jobs.sync.JobSync: what waits to sync, for info
        self.max_open_jobs = max_open_jobs
        self.threshold = threshold
        self.name = name
        self.mesh = mesh
        self.transport_key = transport_key  # this peer's CurveZMQ public key, text form
        self.backend = backend
        self.chunk_window_s = chunk_window_s
        self.peer_id = peer_id
        self.codec = codec
        self._server = server
        self._clock = clock
        self._started = clock() if started_at is None else started_at  # a rebuilt service keeps the process's
        self.answers = answers
        self.certificate_info = certificate_info  # this peer's certificate, for info

    def methods(self) -> dict[str, Method]:
        return {
            "ask": streaming(self.ask), "generate": streaming(self.generate), "info": unary(self.info),
            "ping": unary(self.ping), "job.submit": unary(self.job_submit), "job.list": unary(self.job_list),
            "job.get": unary(self.job_get), "job.cancel": unary(self.job_cancel),
            "embed": streaming(self.embed), EMBED_METHOD: streaming(self.embed_here),
        }

    # -- durable jobs (mesh.jobs); the store lives on this peer, the runner routes them

    def _jobs(self):
        if self.jobs is None:
            raise InvalidRequest("this peer keeps no job store")
        return self.jobs

    async def job_submit(self, args: dict[str, Any], ctx: CallContext) -> dict:
        key = args.get("key")
        if key is not None and not isinstance(key, str):
            raise InvalidRequest("key must be a string")
        ask = args.get("ask")
        if not isinstance(ask, dict):
            raise InvalidRequest("ask must be a map of ask args")
        route = route_args(**(ask.get("route") or {})) if isinstance(ask.get("route"), dict) else {}
        request = {k: v for k, v in ask.items() if k != "route"}
        route_from_args({"route": route})  # validate before storing
        if self.router is not None:
            _check_servable(request, route, self.router.known_models())
        store = self._jobs()
        if store.open_jobs(self.peer_id) >= self.max_open_jobs:
            raise BackendBusy(
                f"{self.max_open_jobs} jobs submitted here are still waiting or running; "
                "try again when some have finished (see `mesh jobs`)"
            )
        job = store.submit(request, owner=self.peer_id, route=route, idempotency_key=key)
        if self.on_submit is not None:
            self.on_submit()
        return {"job": _job_wire(job)}

    async def job_list(self, args: dict[str, Any], ctx: CallContext) -> dict:
        limit = args.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be 1..1000")
        store = self._jobs()
        return {"jobs": [_job_wire(j) for j in store.list(limit=limit)], "counts": store.counts()}

    async def job_get(self, args: dict[str, Any], ctx: CallContext) -> dict:
        return {"job": _job_wire(self._jobs().get(_job_id(args)))}

    async def job_cancel(self, args: dict[str, Any], ctx: CallContext) -> dict:
        store = self._jobs()
        job_id = _job_id(args)
        return {"cancelled": store.cancel(job_id), "job": _job_wire(store.get(job_id))}

    async def ask(self, args: dict[str, Any], ctx: CallContext):
        """A prompt entered at this peer: routed through the mesh (see mesh.routing.router)."""
        from mesh.routing import RouteRequest

        if self.router is None:  # a peer without a mesh view (not started yet): answer here
            async for ev in self.generate(args, ctx):
                yield ev
            return
        request = request_from_ask_args(args)
        route = {"threshold": self.threshold, **route_from_args(args)}
        if route.get("pinned_peer"):
            route["pinned_peer"] = self.router.resolve_peer(route["pinned_peer"])
        events = self.router.ask(request, RouteRequest.for_generation(request, **route),
                                 trace_parent=tracing.extract(args.get("trace")))
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    self.answers += 1
                    if "logprobs" in ev.data:  # the caller has them from the chunks; the whole list may
                        # not fit one frame (rpc max_frame_bytes)
                        ev = Final({k: v for k, v in ev.data.items() if k != "logprobs"})
                yield ev
        finally:
            await events.aclose()

    async def generate(self, args: dict[str, Any], ctx: CallContext):
        """Generate here, with this peer's own backend (what other peers' routers call). A
        caller's ``trace`` makes this generation a span of its trace (mesh.tracing)."""
        request = request_from_ask_args(args)
        span = tracing.child("mesh.generate", tracing.extract(args.get("trace")), kind=tracing.SpanKind.SERVER,
                             attributes={"mesh.peer": self.peer_id})
        final, error = None, None
        stream = coalesce(self.backend.stream(request), window_s=self.chunk_window_s)
        try:
            async for item in stream:
                if isinstance(item, TextChunk):
                    if item.text or item.logprobs:
                        yield text_event(item)
                elif isinstance(item, FinalStats):
                    self.answers += 1
                    final = final_to_wire(item, peer=self.peer_id)
                    yield Final(final)
        except BaseException as e:
            error = e
            raise
        finally:
            tracing.end(span, error=error if final is None else None, attributes=tracing.generation_attributes(final))
            await stream.aclose()

    async def embed(self, args: dict[str, Any], ctx: CallContext):
        """Embeddings of ``input`` (a list of strings), routed through the mesh to a model
        that can make them (``mesh.routing.embed_router``); ``route``: pins, as for ``ask``.
        Streams ``{"v": [vector, ...]}`` chunks (float32 bytes, in input order), then the final."""
        from mesh.routing.embed_router import embed_through, route_for_embedding

        request = EmbeddingRequest.from_wire({"input": args.get("input")})
        route = route_from_args(args)
        if self.router is None:
            out = await self._embed_here(request)
        else:
            peer = self.router.resolve_peer(route["pinned_peer"]) if route.get("pinned_peer") else None
            out = await embed_through(self.router, request, route_for_embedding(
                request, pinned_model=route.get("pinned_model"), pinned_peer=peer))
        for ev in _embedding_events(out):
            yield ev

    async def embed_here(self, args: dict[str, Any], ctx: CallContext):
        """Embeddings made with this peer's own model (what other peers' routers call)."""
        for ev in _embedding_events(await self._embed_here(EmbeddingRequest.from_wire(args))):
            yield ev

    async def _embed_here(self, request: EmbeddingRequest) -> Embeddings:
        embed = getattr(self.backend, "embed", None)
        if embed is None:
            raise InvalidRequest("this peer's model cannot make embeddings")
        return replace(await embed(request), peer=self.peer_id)

    async def ping(self, args: dict[str, Any], ctx: CallContext) -> dict:
        return {"peer": self.peer_id, "time": self._clock()}

    async def info(self, args: dict[str, Any], ctx: CallContext) -> dict:
        caps = self.backend.capabilities
        server = self._server()
        stats = server.stats if server else None
        jobs = self.jobs.counts() if self.jobs is not None else None  # one read for both "jobs" and "sync"
        return {
            "peer": self.peer_id,
            "name": self.name,
            "mesh": self.mesh,
            "transport_key": self.transport_key,
            "certificate": self.certificate_info(),
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
            "engine": _engine_info(self.backend),
            "models": self.backend.snapshot() if hasattr(self.backend, "snapshot") else None,
            "answers": self.answers,
            "memory_pool": self.memory_pool(),
            "jobs": jobs,
            "sync": self.job_sync.pending(jobs) if self.job_sync is not None and jobs is not None else None,
            "rpc": {
                "in_flight": server.in_flight if server else 0,
                "calls_started": stats.calls_started if stats else 0,
                "calls_ok": stats.calls_ok if stats else 0,
                "calls_failed": stats.calls_failed if stats else 0,
                "calls_cancelled": stats.calls_cancelled if stats else 0,
                "refused_rate_limited": stats.refused_rate if stats else 0,
                "casts_rate_limited": stats.casts_rate_limited if stats else 0,
                "errors": dict(stats.by_error) if stats else {},
                "rejections": self.codec.rejections.snapshot(),
                "handshakes_refused": server.handshakes_refused if server else 0,
                "replay_cache": len(self.codec.replay),
            },
        }


def _embedding_events(out: Embeddings):
    """Vectors in chunks that each fit an RPC frame, then the final."""
    for group in chunked(out.vectors):
        yield {"v": group}
    yield Final({"model": out.model, "prompt_tokens": out.prompt_tokens, "peer": out.peer,
                 "dimensions": out.dimensions})


def _engine_info(backend: Backend) -> dict[str, Any]:
    """The engine's state and why, its process and CPU variant, and this machine's CPU."""
    from mesh.inference.cpu_variant import cpu_summary

    st, load = backend.status(), backend.load()
    return {**st.to_wire(), "reason": st.reason, "pid": st.pid, "build": st.engine, "cpu": cpu_summary(),
            "load": {"running": load.running, "waiting": load.waiting}, "session_cache": st.session_cache}


def _check_servable(request: dict, route: dict, known: dict[str, int]) -> None:
    """Refuse at submit a job no model in the mesh could ever serve (rather than queue it
    to fail later): a pinned model nobody has offered, or more tokens than any context."""
    if not known:
        return
    model = route.get("model")
    if model is not None and model not in known:
        raise InvalidRequest(
            f"no peer in this mesh has offered model {model!r} (known: {', '.join(sorted(known))}); "
            "see `mesh peers`"
        )
    limit = known[model] if model is not None else max(known.values())
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= limit:
        raise InvalidRequest(
            f"max_tokens {max_tokens} does not fit the context of {model or 'any model in the mesh'} "
            f"({limit} tokens, prompt included)"
        )


def _job_id(args: dict[str, Any]) -> str:
    job_id = args.get("id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 64:
        raise InvalidRequest("id must be a job id")
    return job_id


def _job_wire(job) -> dict[str, Any]:
    d = job.to_dict()
    d.pop("request", None)  # the caller has it; keep listings small
    d["prompt"] = next((m.get("content", "") for m in reversed(job.request.get("messages", []))
                        if isinstance(m, dict) and m.get("role") == "user"), "")[:200]
    return d
