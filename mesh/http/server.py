"""``HttpServer``: an aiohttp application inside the peer's event loop.

Route groups live in modules of their own (``mesh.http.<group>``), each with
``add_routes(app, peer)``; ``ROUTE_GROUPS`` lists them. ``peer`` is the running
``mesh.peer.Peer`` (its router, membership, job store, RPC server, config).

Started by the peer after its RPC server and router are up, stopped first (before the
router it calls into). ``GET /healthz`` (the process answers) lives here.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from mesh.errors import MeshError

if TYPE_CHECKING:
    from mesh.peer import Peer

log = logging.getLogger("mesh.http")

PEER_KEY = web.AppKey("peer", object)

# Each module has add_routes(app: web.Application, peer: Peer) -> None.
ROUTE_GROUPS: list[str] = ["ops", "dashboard", "openai_api", "mesh_api"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(peer: "Peer") -> web.Application:
    app = web.Application(client_max_size=1 << 20)  # request bodies above 1 MiB: 413
    app[PEER_KEY] = peer
    app.router.add_get("/healthz", healthz)
    for name in ROUTE_GROUPS:
        importlib.import_module(f"mesh.http.{name}").add_routes(app, peer)
    return app


class HttpServer:
    def __init__(self, peer: "Peer", *, host: str, port: int) -> None:
        self.peer = peer
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self) -> str:
        """Bind and serve; returns the base URL (``http://host:port``)."""
        self.app = build_app(self.peer)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise MeshError(
                f"cannot serve HTTP on {self.host}:{self.port} ({e.strerror or e}); "
                "pick another --http-port, or --no-http"
            ) from None
        sock = site._server.sockets[0]  # the bound port when port 0 was asked for
        host, port = sock.getsockname()[:2]
        self.port = port
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        self.url = f"http://{shown}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
