"""Operations endpoints: ``GET /metrics`` and ``GET /readyz``.

- ``/healthz`` (in ``mesh.http.server``): the process answers HTTP. For liveness probes.
- ``/readyz``: the peer can take prompts: its backend is loaded, its RPC server accepts
  calls and its membership (gossip) loops run, and it is not stopping. 200 with
  ``{"status": "ready"}``, else 503 with ``{"status": "not ready", "reason": ...}``.
  For readiness probes and load balancers. Open without a key, like ``/healthz``.
- ``/metrics``: the peer's own Prometheus registry (``mesh.http.metrics``) in the text
  exposition format. Same access rule as the API (``mesh.http.guard``): open on a
  loopback bind, a bearer key on any other.

Also installs the middleware that marks prompts arriving over HTTP as entry "http"
for the metrics (``mesh.http.metrics.ENTRY``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.http.apikeys import ApiKeyStore
from mesh.http.guard import KEY_CHECK, refusal
from mesh.http.metrics import ENTRY
from mesh.http.server import PEER_KEY

if TYPE_CHECKING:
    from mesh.peer import Peer


def not_ready_reason(peer: "Peer") -> str | None:
    """Why ``peer`` cannot take prompts now, or None when it can."""
    if getattr(peer, "_stopped", False):
        return "stopping"
    if peer._backend is None:
        return "backend not loaded"
    server = peer.server
    if server is None or not getattr(server, "_accepting", False):
        return "RPC server not serving"
    task = getattr(server, "_recv_task", None)
    if task is not None and task.done():
        return "RPC server receive loop ended"
    membership = peer.membership_service
    if membership is None:
        return "membership not started"
    if not membership.running:
        return "membership (gossip) not running"
    if peer.router is None:
        return "router not built"
    return None


async def readyz(request: web.Request) -> web.Response:
    reason = not_ready_reason(request.app[PEER_KEY])
    if reason is not None:
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    peer = request.app[PEER_KEY]
    refused = refusal(request, peer.config.http_host, peer.config.http_open_loopback)
    if refused is not None:
        return refused
    body = generate_latest(peer.metrics.registry)
    # CONTENT_TYPE_LATEST carries its own charset parameter; aiohttp wants it whole in headers
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def http_entry(request: web.Request, handler):
    token = ENTRY.set("http")
    try:
        return await handler(request)
    finally:
        ENTRY.reset(token)


def add_routes(app: web.Application, peer: "Peer") -> None:
    if KEY_CHECK not in app:  # the API module may have registered its own check first
        app[KEY_CHECK] = ApiKeyStore(peer.data.api_keys).verify
    app.middlewares.append(http_entry)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
