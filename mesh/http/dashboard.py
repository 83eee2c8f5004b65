"""The dashboard: one page served by the peer itself (``mesh/http/static``, plain HTML,
CSS and JS; no build step, nothing from a CDN), and the JSON it reads.

- ``GET /``: the page; ``GET /dashboard/{file}``: its script and style.
- ``GET /api/mesh``: a snapshot: this peer, the members as its gossip view has them
  (state, name, models, load, battery), the recent requests (``mesh.http.recent``), totals.
- ``GET /api/events``: server-sent events; a ``mesh`` event with the same snapshot
  every ``EVENT_INTERVAL_S``, until the client leaves or the peer stops.
- ``POST /api/ask``: ``{"prompt", "max_tokens"?, "local_only"?, "no_escalate"?}`` ->
  server-sent events ``step`` (who is answering and why), ``t`` (text), then ``final``
  (who answered, model, confidence, path) or ``error``. It calls the Router like every
  other entry point, so the prompt is counted with entry "http".

``/api/*`` follows the API's access rule (``mesh.http.guard``); the page itself holds no
data and is served to anyone who can connect (it asks for a key when ``/api`` wants one).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh import __version__
from mesh.api import request_from_ask_args, route_from_args
from mesh.errors import InvalidRequest, MeshError
from mesh.gossip.view import Hardware, MemberView
from mesh.http.guard import refusal
from mesh.http.recent import outcome_of
from mesh.http.server import PEER_KEY
from mesh.rpc.server import Final

if TYPE_CHECKING:
    from mesh.peer import Peer

STATIC = Path(__file__).parent / "static"
EVENT_INTERVAL_S = 1.0
RECENT_SHOWN = 30
MAX_PROMPT_CHARS = 8000
STOP_KEY = web.AppKey("dashboard_stop", asyncio.Event)
STATE_ORDER = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}


# -- the snapshot (pure over what the peer's parts report) ---------------------------------


def member_row(m: MemberView, *, choices: dict[str, int]) -> dict[str, Any]:
    meta = m.meta
    first = m.models[0] if m.models else None
    load = meta.load.to_wire() if meta is not None else dict.fromkeys(("running", "waiting", "parallel", "queue_limit"))
    hw = meta.hw if meta is not None else Hardware()
    return {
        "peer_id": m.peer_id,
        "name": m.name or m.peer_id[:12],
        "state": m.state,
        "self": m.is_self,
        "model": first.name if first else None,
        "models": [x.name for x in m.models],
        "parameters": first.parameters if first else None,
        "quantisation": first.quantisation if first else None,
        "tokens_per_s": first.tokens_per_s if first else None,
        "load": load,
        "on_battery": hw.on_battery,
        "cpu_count": hw.cpu_count,
        "ram_total_mb": hw.ram_total_mb,
        "ram_available_mb": hw.ram_available_mb,
        "gpu": hw.gpu or None,
        "address": m.address,
        "last_heard_s": m.last_heard_s,
        "since_s": m.since_s,
        "chosen": choices.get(m.peer_id, 0),
        # one model across several peers (docs/split.md): its slots by peer, and memory lent
        "layers": [{"name": p.name or p.peer[:12], "layers": p.layers} for p in meta.split] if meta else [],
        "lends": {"offer_mb": meta.lend.offer_mb, "free_mb": meta.lend.free_mb} if meta and meta.lend else None,
    }


def members_table(view: list[MemberView], *, choices: dict[str, int]) -> list[dict[str, Any]]:
    """Rows for the page: this peer first, then by state (alive, suspect, dead, left), then name."""
    rows = [member_row(m, choices=choices) for m in view]
    rows.sort(key=lambda r: (not r["self"], STATE_ORDER.get(r["state"], 9), r["name"], r["peer_id"]))
    return rows


def snapshot(peer: "Peer", *, now: float, recent: int = RECENT_SHOWN) -> dict[str, Any]:
    view = peer.membership_service.view() if peer.membership_service is not None else []
    choices = dict(peer.router.choices) if peer.router is not None else {}
    caps = peer.backend.capabilities if peer._backend is not None else None
    cloud = peer.router.cloud if peer.router is not None else None
    states = dict.fromkeys(STATE_ORDER, 0)
    for m in view:
        states[m.state] = states.get(m.state, 0) + 1
    return {
        "time": now,
        "self": {
            "peer_id": peer.identity.peer_id_text if peer.identity else None,
            "name": peer.config.name,
            "mesh": peer.membership.mesh_id_text if peer.membership else None,
            "model": caps.model if caps else None,
            "version": __version__,
            "threshold": peer.config.threshold,
            "cloud": cloud.capabilities.model if cloud is not None else None,
            "http": peer.http_url,
            "uptime_s": max(0.0, now - peer.metrics.started),
        },
        "states": states,
        "members": members_table(view, choices=choices),
        "totals": dict(peer.metrics.totals),
        "requests": peer.metrics.recent.snapshot(recent),
        "charts": peer.metrics.timeline.snapshot(now),
        "jobs": peer.jobs.counts() if peer.jobs is not None else None,
    }


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# -- handlers -------------------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def api_mesh(request: web.Request) -> web.Response:
    peer = request.app[PEER_KEY]
    refused = refusal(request, peer.config.http_host, peer.config.http_open_loopback)
    if refused is not None:
        return refused
    return web.json_response(snapshot(peer, now=peer.clock()))


def _event_stream() -> web.StreamResponse:
    return web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })


async def api_events(request: web.Request) -> web.StreamResponse:
    peer = request.app[PEER_KEY]
    refused = refusal(request, peer.config.http_host, peer.config.http_open_loopback)
    if refused is not None:
        return refused
    stop = request.app[STOP_KEY]
    resp = _event_stream()
    await resp.prepare(request)
    try:
        while not stop.is_set():
            await resp.write(sse("mesh", snapshot(peer, now=peer.clock())))
            try:
                await asyncio.wait_for(stop.wait(), EVENT_INTERVAL_S)
            except TimeoutError:
                pass
    except ConnectionResetError:  # the page went away
        pass
    return resp


def _ask_body(body: Any) -> tuple[dict, dict]:
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt must be a non-empty string of at most {MAX_PROMPT_CHARS} characters")
    args = {"messages": [{"role": "user", "content": prompt}], "max_tokens": body.get("max_tokens", 128)}
    route = {k: body[k] for k in ("local_only", "no_escalate", "model") if k in body}
    return args, route


async def api_ask(request: web.Request) -> web.StreamResponse:
    from mesh.routing import RouteRequest

    peer = request.app[PEER_KEY]
    refused = refusal(request, peer.config.http_host, peer.config.http_open_loopback)
    if refused is not None:
        return refused
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    try:
        args, route_raw = _ask_body(body)
        gen = request_from_ask_args(args)
        route = {"threshold": peer.config.threshold, **route_from_args({"route": route_raw})}
    except InvalidRequest as e:
        return web.json_response({"error": str(e)}, status=400)
    if peer.router is None:
        return web.json_response({"error": "peer not ready"}, status=503)
    resp = _event_stream()
    await resp.prepare(request)
    events = peer.router.ask(gen, RouteRequest.for_generation(gen, **route), entry="http")
    try:
        async for ev in events:
            if isinstance(ev, Final):
                final = {k: v for k, v in ev.data.items() if k != "text"}
                await resp.write(sse("final", final))
            elif "t" in ev:
                await resp.write(sse("t", {"t": ev["t"]}))
            elif "step" in ev:
                await resp.write(sse("step", ev["step"]))
    except ConnectionResetError:
        pass
    except MeshError as e:
        await resp.write(sse("error", {"error": str(e), "outcome": outcome_of(e)}))
    finally:
        await events.aclose()
    return resp


async def _stop_streams(app: web.Application) -> None:
    app[STOP_KEY].set()


def add_routes(app: web.Application, peer: "Peer") -> None:
    app[STOP_KEY] = asyncio.Event()
    app.on_shutdown.append(_stop_streams)
    app.router.add_get("/", index)
    app.router.add_static("/dashboard/", STATIC, append_version=False)
    app.router.add_get("/api/mesh", api_mesh)
    app.router.add_get("/api/events", api_events)
    app.router.add_post("/api/ask", api_ask)
