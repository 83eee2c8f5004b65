"""The mesh's own HTTP endpoints beside the OpenAI-compatible ones: durable jobs and the
members, for tools that speak HTTP rather than the RPC (the n8n node in
``integrations/n8n``). See docs/http.md, "Jobs and peers".

- ``POST /v1/mesh/jobs``: submit a durable job (``mesh.jobs``; the same as
  ``mesh jobs submit``): ``{"prompt": str}`` or ``{"messages": [...]}``, optional
  ``model``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``idempotency_key``,
  and the ``mesh`` object of the chat API (``peer``, ``session``, ``local_only``,
  ``no_escalate``, ``threshold``). 202 with ``{"job": {...}}``.
- ``GET /v1/mesh/jobs/{id}?wait=S``: the job; with ``wait`` (seconds, at most
  ``MAX_WAIT_S``) the answer waits until the job has ended or the time is up.
  ``{"job": {..., "state", "result_text", "stats", "error"}}``.
- ``GET /v1/mesh/peers``: ``{"self": peer id, "peers": [...]}``, the members as this
  peer's gossip view has them (the dashboard's rows, ``mesh.http.dashboard.member_row``).

Same admission as the chat API (key, then rate limit: ``OpenAIApi.admit``). Errors have
the chat API's shape; mesh errors are mapped here and nowhere else:

| error | status | code |
|---|---|---|
| ``InvalidRequest`` (a bad field, a model nobody serves) | 400 | ``invalid_value`` |
| ``IdempotencyConflict`` | 409 | ``idempotency_conflict`` |
| ``JobNotFound`` | 404 | ``job_not_found`` |
| ``BackendBusy`` (too many open jobs) | 429 | ``busy`` |
| ``JobStoreError`` / a peer without a job store | 503 | ``jobs_unavailable`` |
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh.errors import BackendBusy, IdempotencyConflict, InvalidRequest, JobNotFound, JobStoreError, MeshError
from mesh.http.dashboard import members_table
from mesh.http.openai_api import OPENAI_KEY
from mesh.http.openai_schema import ApiError, bad
from mesh.http.server import PEER_KEY

if TYPE_CHECKING:
    from mesh.peer import Peer

MAX_WAIT_S = 300.0  # a longer wait is refused: ask again instead
POLL_S = 0.2  # how often a waiting request looks at the job store
MESH_ROUTE_KEYS = ("peer", "session", "local_only", "no_escalate", "threshold")
ASK_KEYS = ("max_tokens", "temperature", "top_p", "seed")
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})


# -- input (pure) ---------------------------------------------------------------------


def job_submission(body: Any) -> dict[str, Any]:
    """A ``POST /v1/mesh/jobs`` body -> the ``job.submit`` RPC args.

    Only the shape is checked here; the values are checked by ``PeerService.job_submit``
    and the job store exactly as for ``mesh jobs submit``."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object", None, "invalid_type")
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        raise bad("send either prompt (a string) or messages (a list), not both", "prompt", "invalid_value")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad("prompt must be a non-empty string", "prompt", "invalid_type")
        messages = [{"role": "user", "content": prompt}]
    ask: dict[str, Any] = {"messages": messages, **{k: body[k] for k in ASK_KEYS if body.get(k) is not None}}
    route: dict[str, Any] = {}
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise bad("model must be a string", "model", "invalid_type")
        if model.lower() != "mesh":  # the virtual model: route for me
            route["model"] = model
    mesh = body.get("mesh")
    if mesh is not None:
        if not isinstance(mesh, dict):
            raise bad("mesh must be an object (see docs/http.md)", "mesh", "invalid_type")
        route.update({k: mesh[k] for k in MESH_ROUTE_KEYS if mesh.get(k) is not None})
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
        raise bad("idempotency_key must be a string of 1..128 characters", "idempotency_key", "invalid_value")
    if route:
        ask["route"] = route
    return {"ask": ask, **({"key": key} if key is not None else {})}


def wait_seconds(query: Any) -> float:
    raw = query.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise bad(f"wait must be a number of seconds, got {raw!r}", "wait", "invalid_type") from None
    if not 0 <= wait <= MAX_WAIT_S:  # NaN fails too
        raise bad(f"wait must be in [0, {MAX_WAIT_S:g}] seconds, got {raw}", "wait", "invalid_value")
    return wait


def error_for_job(e: MeshError) -> ApiError:
    """The HTTP answer to a mesh error from the job store or ``job.submit``."""
    if isinstance(e, JobNotFound):  # its message names the store's path: not for remote callers
        return ApiError(404, "no job with that id on this peer", param="job_id", code="job_not_found")
    if isinstance(e, IdempotencyConflict):
        return ApiError(409, str(e), code="idempotency_conflict")
    if isinstance(e, InvalidRequest):
        if "no job store" in str(e):
            return ApiError(503, str(e), type="service_unavailable", code="jobs_unavailable")
        return bad(str(e).replace("route.", "mesh."), None, "invalid_value")
    if isinstance(e, BackendBusy):
        return ApiError(429, str(e), type="server_busy", code="busy", headers={"Retry-After": "1"})
    if isinstance(e, JobStoreError):
        return ApiError(503, str(e), type="service_unavailable", code="jobs_unavailable")
    return ApiError(502, str(e), type="api_error", code=getattr(e, "code", "mesh_error"))


# -- handlers -------------------------------------------------------------------------


def _service(peer: "Peer"):
    if peer.service is None:
        raise ApiError(503, "this peer is still starting", type="service_unavailable", code="not_ready")
    return peer.service


async def submit_job(request: web.Request) -> web.Response:
    peer = request.app[PEER_KEY]
    request.app[OPENAI_KEY].admit(request)
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"the request body is over {request.client_max_size} bytes",
                       code="request_too_large") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad("the request body is not valid JSON (or nests too deep)", None, "invalid_json") from None
    args = job_submission(body)
    try:
        out = await _service(peer).job_submit(args, None)
    except MeshError as e:
        raise error_for_job(e) from None
    return web.json_response(out, status=202)


async def get_job(request: web.Request) -> web.Response:
    peer = request.app[PEER_KEY]
    request.app[OPENAI_KEY].admit(request)
    wait = wait_seconds(request.query)
    args = {"id": request.match_info["job_id"]}
    service = _service(peer)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        while True:
            job = (await service.job_get(args, None))["job"]
            left = deadline - loop.time()
            if job["state"] in TERMINAL_STATES or left <= 0:
                return web.json_response({"job": job})
            await asyncio.sleep(min(POLL_S, left))
    except MeshError as e:
        raise error_for_job(e) from None


async def list_peers(request: web.Request) -> web.Response:
    peer = request.app[PEER_KEY]
    request.app[OPENAI_KEY].admit(request)
    view = peer.membership_service.view() if peer.membership_service is not None else []
    choices = dict(peer.router.choices) if peer.router is not None else {}
    return web.json_response({
        "self": peer.identity.peer_id_text if peer.identity else None,
        "peers": members_table(view, choices=choices),
    })


def _guarded(handler):
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return web.Response(text=json.dumps(e.body()), status=e.status, headers=e.headers,
                                content_type="application/json")

    return run


def add_routes(app: web.Application, peer: "Peer") -> None:
    app.router.add_post("/v1/mesh/jobs", _guarded(submit_job))
    app.router.add_get("/v1/mesh/jobs/{job_id}", _guarded(get_job))
    app.router.add_get("/v1/mesh/peers", _guarded(list_peers))
