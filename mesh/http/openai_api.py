"""The OpenAI-compatible API of a peer: ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /v1/models`` (see docs/http.md), and ``POST
/v1/embeddings`` (``mesh.http.openai_embeddings``).

A thin shell: the body is checked by ``mesh.http.openai_schema``, the prompt is routed
by the peer's Router exactly as ``mesh ask`` is (``mesh.service.PeerService.ask``), and
the answer is shaped by ``mesh.http.openai_format``. Order of checks on every request:
key (401), rate limit (429), body size (413), body (400/404), then routing (503 when
nothing can answer, 429 when every fit peer is busy).

Keys come from ``api_keys.json`` (``mesh.http.apikeys``; ``mesh keys create``). A caller on
this machine may go without a key when ``http_open_loopback`` allows it: ``auto`` (the
default) when the HTTP server is bound to a loopback address, ``yes`` for loopback
callers whatever the bind, ``no`` never. Such a caller may send any bearer token that is
not shaped like a mesh key (the OpenAI SDK insists on one); a token that is shaped like
one must be valid.

``app[OPENAI_KEY]`` is the ``OpenAIApi`` object: ``rejections`` (a Counter by reason)
is read by the metrics.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh import tracing
from mesh.errors import InvalidRequest, MeshError
from mesh.http.apikeys import KEY_PREFIX, ApiKeyStore
from mesh.http.guard import KEY_CHECK, bearer, keyless_allowed
from mesh.http.openai_embeddings import embeddings
from mesh.http.openai_format import (
    chunk,
    completion_object,
    mesh_field,
    mesh_headers,
    model_list,
    tool_call_id,
    tool_deltas,
    usage_chunk,
)
from mesh.http.openai_schema import (
    ApiCall,
    ApiError,
    bad,
    error_for,
    parse_chat,
    parse_completion,
)
from mesh.inference.tools import ToolCallParser
from mesh.paths import DataDir
from mesh.rpc.ratelimit import RateLimiter, retry_after_header
from mesh.rpc.server import Final

if TYPE_CHECKING:
    from mesh.peer import Peer

log = logging.getLogger("mesh.http.openai")

OPENAI_KEY = web.AppKey("openai_api", object)
OPEN_LOOPBACK_MODES = ("auto", "yes", "no")



class OpenAIApi:
    def __init__(self, peer: Peer, *, keys: ApiKeyStore, limiter: RateLimiter, open_loopback: str,
                 clock: Callable[[], float] = time.time) -> None:
        if open_loopback not in OPEN_LOOPBACK_MODES:
            raise ValueError(f"open_loopback must be one of {OPEN_LOOPBACK_MODES}")
        self.peer = peer
        self.keys = keys
        self.limiter = limiter
        self.open_loopback = open_loopback
        self._clock = clock
        self.rejections: Counter[str] = Counter()  # by reason: unauthorized, rate_limited, too_large, ...
        self.answers: Counter[str] = Counter()  # by endpoint kind and mode: chat, chat_stream, text, ...

    # -- admission ----------------------------------------------------------------------

    def _caller(self, request: web.Request) -> str:
        """The rate-limit key of an admitted caller; raises ApiError 401 otherwise."""
        token = bearer(request)
        keyless = keyless_allowed(self.open_loopback, bind_host=self.peer.config.http_host, remote=request.remote)
        if token is not None and (not keyless or token.startswith(KEY_PREFIX)):
            try:
                key = self.keys.lookup(token)
            except MeshError as e:
                log.error("API keys unreadable: %s", e)
                raise ApiError(500, "this peer cannot read its API keys; see its log", type="api_error") from None
            if key is not None and not key.revoked:
                return f"key:{key.id}"
            raise ApiError(401, "Incorrect API key provided" + (" (it was revoked)" if key is not None else ""),
                           type="invalid_request_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if keyless:
            return f"addr:{request.remote}"
        raise ApiError(401, "You didn't provide an API key. Send Authorization: Bearer KEY "
                            "(keys are made with `mesh keys create NAME` on the peer's machine)",
                       type="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def admit(self, request: web.Request) -> None:
        caller = self._caller(request)
        wait = self.limiter.take(caller, now=self._clock())
        if wait > 0:
            raise ApiError(429, f"Rate limit reached for this key or address; try again in {wait:.1f} s",
                           type="requests", code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after_header(wait)})

    # -- handlers -------------------------------------------------------------------------

    def _models(self) -> dict[str, Any]:
        peer = self.peer
        router = peer.router
        view = peer.membership_service.view() if peer.membership_service is not None else []
        caps = peer.backend.capabilities
        cloud = router.cloud.capabilities.model if router is not None and router.cloud is not None else None
        return model_list(view, own=(caps.model, caps.context_length), cloud=cloud)

    async def models(self, request: web.Request) -> web.Response:
        self.admit(request)
        return web.json_response(self._models())

    def model_names(self) -> list[str]:
        """The models a request may pin (``GET /v1/models`` without ``mesh``)."""
        return [m["id"] for m in self._models()["data"][1:]]

    async def read_json(self, request: web.Request) -> Any:
        """The request's JSON body: 413 past the size limit, 400 when it is not JSON."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request body is over {request.client_max_size} bytes",
                           code="request_too_large") from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad("the request body is not valid JSON (or nests too deep)", None, "invalid_json") from None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, parse_chat)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, parse_completion)

    async def _complete(self, request: web.Request, parse) -> web.StreamResponse:
        from mesh.routing import RouteRequest

        self.admit(request)
        call = parse(await self.read_json(request), models=self.model_names())
        router = self.peer.router
        if router is None:
            raise ApiError(503, "this peer is still starting", type="service_unavailable", code="not_ready")
        route = {"threshold": self.peer.config.threshold, **call.route}
        try:
            if route.get("pinned_peer"):
                route["pinned_peer"] = router.resolve_peer(route["pinned_peer"])
            route_request = RouteRequest.for_generation(call.request, **route)
        except InvalidRequest as e:
            raise bad(str(e).replace("--peer", "mesh.peer"), "mesh") from None
        # a client's W3C trace context (traceparent header) makes this prompt part of its trace
        parent = tracing.extract({k: request.headers[k] for k in ("traceparent", "tracestate") if k in request.headers})
        events = router.ask(call.request, route_request, entry="http", trace_parent=parent)
        self.answers[call.kind + ("_stream" if call.stream else "")] += 1
        try:
            if call.stream:
                return await self._stream(request, call, events)
            return await self._whole(request, call, events)
        finally:
            await events.aclose()  # a client gone mid-answer stops generation here

    def _names(self) -> dict[str, str]:
        ms = self.peer.membership_service
        return {m.peer_id: m.name for m in ms.view()} if ms is not None else {}

    async def _whole(self, request: web.Request, call: ApiCall, events) -> web.StreamResponse:
        final = None
        try:
            async for ev in events:
                if _gone(request):
                    self.rejections["client_gone"] += 1
                    return web.Response(status=499)  # nobody reads it; the finally closes the generation
                if isinstance(ev, Final):
                    final = ev.data
        except MeshError as e:
            raise error_for(e) from None
        if final is None:
            raise ApiError(502, "the mesh ended without an answer", type="api_error")
        cid = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + secrets.token_hex(12)
        obj = completion_object(call, final, id=cid, created=int(self._clock()), names=self._names())
        return web.json_response(obj, headers=mesh_headers(final))

    async def _stream(self, request: web.Request, call: ApiCall, events) -> web.StreamResponse:
        cid = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + secrets.token_hex(12)
        created = int(self._clock())
        router = self.peer.router
        first = {"peer": router.self_id, "model": self.peer.backend.capabilities.model}
        model = first["model"]
        resp: web.StreamResponse | None = None
        sent_text, restarted = False, False

        async def send(obj: dict) -> None:
            await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

        # a request with tools: its answer is read as text or a tool call (mesh.inference.tools)
        tools = ToolCallParser() if call.request.tools is not None else None

        async def emit(text: str, lp=None, *, last: bool = False) -> None:
            if tools is None:
                if text or lp:
                    await send(chunk(call, id=cid, created=created, model=model, text=text, logprobs=lp))
                return
            parts = tool_deltas(tools, text, call_id=tool_call_id(cid), last=last) or ([{}] if lp else [])
            for i, part in enumerate(parts):
                await send(chunk(call, id=cid, created=created, model=model, logprobs=lp if i == 0 else None, **part))

        async def start() -> None:
            nonlocal resp
            # the first rung's peer and model; the last chunk's "mesh" says who kept the answer
            resp = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                **{k: v for k, v in mesh_headers(first).items() if k in ("X-Mesh-Peer", "X-Mesh-Model")},
            })
            await resp.prepare(request)
            await send(chunk(call, id=cid, created=created, model=model, first=True))

        try:
            async for ev in events:
                if _gone(request):
                    raise ConnectionResetError
                if isinstance(ev, Final):
                    final = ev.data
                    if resp is None:
                        first.update(peer=final.get("peer"), model=final.get("model"))
                        await start()
                        if final.get("text"):
                            await emit(final["text"], final.get("logprobs"))
                    if tools is not None:
                        await emit("", last=True)
                    facts = mesh_field(final, names=self._names())
                    facts["restarted"] = restarted
                    if restarted:
                        facts["text"] = final.get("text") or ""  # what was kept, replacing the streamed text
                    reason = final.get("finish_reason") or "stop"
                    if tools is not None and tools.mode == "call" and reason == "stop":
                        reason = "tool_calls"
                    await send(chunk(call, id=cid, created=created, model=final.get("model") or model,
                                     finish_reason=reason, mesh=facts))
                    if call.include_usage:
                        await send(usage_chunk(call, final, id=cid, created=created))
                    await resp.write(b"data: [DONE]\n\n")
                    await resp.write_eof()
                    return resp
                step = ev.get("step") if isinstance(ev, dict) else None
                if step is not None:
                    if step.get("model"):
                        model = step["model"]
                    if resp is None and step.get("peer"):
                        first.update(peer=step["peer"], model=model)
                    elif sent_text and step.get("restart"):
                        restarted = True
                        await send(chunk(call, id=cid, created=created, model=model, mesh={"restart": True, **{
                            k: step.get(k) for k in ("kind", "reason", "peer", "model") if k in step}}))
                    continue
                text = ev.get("t") if isinstance(ev, dict) else None
                lp = ev.get("lp") if isinstance(ev, dict) else None
                if isinstance(text, str) and (text or lp):
                    if resp is None:
                        await start()
                    await emit(text, lp)
                    sent_text = True
        except MeshError as e:
            err = error_for(e)
            if resp is None:  # nothing sent yet: a plain HTTP error the SDK raises as such
                raise err from None
            self.rejections[err.code or "error"] += 1
            await send(err.body())  # the OpenAI SDK raises an APIError on an "error" event
            await resp.write(b"data: [DONE]\n\n")
            return resp
        except ConnectionError:  # the client went away: the caller's finally closes the generation
            self.rejections["client_gone"] += 1
            return resp or web.Response(status=499)
        raise ApiError(502, "the mesh ended without an answer", type="api_error")


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _guarded(api: OpenAIApi, handler):
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            api.rejections[_reason(e)] += 1
            return web.json_response(e.body(), status=e.status, headers=e.headers)

    return run


def _reason(e: ApiError) -> str:
    if e.status == 401:
        return "revoked_key" if "revoked" in e.message else "unauthorized"
    if e.status == 429:
        return "rate_limited" if e.code == "rate_limit_exceeded" else "busy"
    return {413: "too_large", 404: "model_not_found", 503: "no_answer"}.get(e.status, "bad_request"
                                                                         if e.status == 400 else "error")


def add_routes(app: web.Application, peer: Peer) -> None:
    cfg = peer.config
    keys = ApiKeyStore(DataDir(cfg.data_dir).api_keys)
    limiter = RateLimiter(rate_per_s=cfg.http_rate_per_s, burst=cfg.http_burst)
    api = OpenAIApi(peer, keys=keys, limiter=limiter, open_loopback=cfg.http_open_loopback)
    app[OPENAI_KEY] = api
    app[KEY_CHECK] = keys.verify  # the ops pages (mesh.http.guard) accept the same keys
    app.router.add_get("/v1/models", _guarded(api, api.models))
    app.router.add_post("/v1/chat/completions", _guarded(api, api.chat))
    app.router.add_post("/v1/completions", _guarded(api, api.completions))
    app.router.add_post("/v1/embeddings", _guarded(api, functools.partial(embeddings, api)))
