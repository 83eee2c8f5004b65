"""Who may read a peer's operational pages (``/metrics``, the dashboard and its
``/api/*``): the same rule as the OpenAI-compatible API.

- Callers on this machine go without a key as ``--http-open-loopback`` says (``auto``,
  the default: when HTTP is bound to a loopback address; ``yes``: on any bind; ``no``:
  never), exactly as for the OpenAI-compatible API.
- Everyone else: every request needs ``Authorization: Bearer <key>`` with
  a key the API accepts (``mesh keys create NAME``; ``mesh.http.apikeys``). The check is
  ``app[KEY_CHECK]`` (``Callable[[str], bool]``), set by ``mesh.http.ops`` unless the API
  module set its own; without one, nothing but ``/healthz`` and ``/readyz`` is served
  to anyone (403), rather than exposing prompts and metrics on the network.

``/healthz`` and ``/readyz`` stay open everywhere: they say only whether the process is
up and ready, which load balancers and supervisors need without a key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from aiohttp import web

KEY_CHECK = web.AppKey("api_key_check", Callable)


def loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _loopback_remote(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def keyless_allowed(mode: str, *, bind_host: str, remote: str | None) -> bool:
    """May a caller at ``remote`` use the API without a key? (see the module docstring)"""
    if mode == "no" or not _loopback_remote(remote):
        return False
    return mode == "yes" or loopback_host(bind_host)


def refusal(request: web.Request, host: str, mode: str = "auto") -> web.Response | None:
    """None when ``request`` may read operational data; else the response to send.
    ``mode``: the peer's ``http_open_loopback`` (auto, yes, no), as for the API."""
    if keyless_allowed(mode, bind_host=host, remote=request.remote):
        return None
    check = request.app.get(KEY_CHECK)
    if check is None:
        return web.json_response(
            {"error": {"message": "this peer's HTTP is not bound to loopback and has no API keys: "
                                  "ops pages are refused", "type": "forbidden"}}, status=403)
    token = bearer(request)
    if token is None or not check(token):
        return web.json_response(
            {"error": {"message": "an API key is needed (Authorization: Bearer <key>; "
                                  "create one with `mesh keys create NAME`)", "type": "unauthorized"}},
            status=401, headers={"WWW-Authenticate": "Bearer"})
    return None
