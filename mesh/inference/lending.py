"""A peer lends memory to other peers' split models (``mesh-peer --lend-memory GB``, issue 16).

A lending peer runs llama.cpp's ggml RPC server in a process of its own, on loopback
only (``mesh.inference.rpc_lender``), and a tunnel server (``mesh.rpc.tunnel``) on the
host of its RPC address: the only way in. It gossips what it lends
(``PeerMeta.lend``: offer, free, tunnel port, engine build) and answers two signed
calls from members:

- ``lend.reserve {bytes, build}`` -> ``{token, port, bytes}``: memory held for the
  caller, and a grant, bound to the CurveZMQ key the call came over, that opens tunnel
  streams. Refused (``LendRefused``, counted by reason) when the caller asks more than
  is free, names another engine build, has no CurveZMQ key, or when another member holds
  the lender already: a ggml RPC server serves one client at a time, so a lender serves
  one borrower at a time. A second reserve by the same member replaces its first (a
  re-plan).
- ``lend.release {token}``: gives it back (only the holder can).

A grant lasts until it is released or its holder is no longer a live member (dead,
left, or revoked: checked every ``check_s``); then its streams close. If the ggml RPC
server process dies it is started again (the borrower's model fails on its side and
re-plans). The weight cache (``ggml-cache`` in the data dir) stays, so a re-plan sends
hashes instead of weights it already sent.

What the lender cannot enforce: the ggml RPC server allocates whatever its client asks
for (it takes no memory limit), so ``bytes`` is what the borrower promised to place;
the borrower's planner never places more (``mesh.inference.split_plan``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from mesh.clock import SYSTEM, Clock
from mesh.errors import LendRefused
from mesh.gossip.view import LendInfo, MemberView
from mesh.identity.keys import peer_id_text
from mesh.identity.transport import TransportKeys
from mesh.rpc.server import CallContext, unary
from mesh.rpc.tunnel import TunnelServer
from mesh.rpc.tunnel_wire import TOKEN_BYTES

log = logging.getLogger("mesh.inference.lending")

MB = 1 << 20
CHECK_S = 2.0


def engine_build() -> str:
    """What must match between a borrower and its lenders: ggml's RPC protocol changes
    with llama.cpp, so the same llama-cpp-python release on both sides."""
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        version = "none"
    return f"llama-cpp-python/{version}"


class LendingService:
    def __init__(
        self,
        *,
        offer_bytes: int,
        cache_dir: Path,
        transport: TransportKeys,
        members: Callable[[], list[MemberView]],
        refuse_key: Callable[[bytes], bool],
        threads: int | None = None,
        clock: Clock = SYSTEM,
        check_s: float = CHECK_S,
        build: str | None = None,
    ) -> None:
        if offer_bytes < MB:
            raise ValueError("a lender offers at least 1 MB")
        self.offer_bytes = offer_bytes
        self.cache_dir = cache_dir
        self.build = build or engine_build()
        self._transport = transport
        self._members = members
        self._refuse_key = refuse_key
        self._threads = threads
        self._clock = clock
        self.check_s = check_s
        self.refused: Counter = Counter()
        self.reserves = 0
        self.restarts = 0  # the ggml RPC server died and was started again
        self.fresh_servers = 0  # started afresh for a new reservation
        self._served = False  # the running server has had a reservation
        self._replacing = asyncio.Lock()  # one replacement of the server at a time
        self.lender = None  # mesh.inference.rpc_lender.Lender
        self.tunnel: TunnelServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, host: str) -> None:
        from mesh.inference.rpc_lender import start_lender

        self.lender = await asyncio.to_thread(
            start_lender, cache_dir=self.cache_dir, offer_bytes=self.offer_bytes, threads=self._threads)
        self.tunnel = TunnelServer(self._transport, target_port=self.lender.port, refuse_key=self._refuse_key)
        await asyncio.to_thread(self.tunnel.start, host)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="lending-watch")
        log.info("lending %.0f MB to the mesh: ggml RPC server on %s (loopback only), tunnel on %s:%d",
                 self.offer_bytes / MB, self.lender.endpoint, host, self.tunnel.port)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.close)
        if self.lender is not None:
            await asyncio.to_thread(self.lender.stop)

    def info(self) -> LendInfo | None:
        """What this peer gossips about its lending (None before it is up)."""
        if self.tunnel is None or self.tunnel.port is None:
            return None
        free = max(self.offer_bytes - self.tunnel.reserved(), 0)
        return LendInfo(offer_mb=max(self.offer_bytes // MB, 1), free_mb=free // MB, port=self.tunnel.port,
                        build=self.build)

    def status(self) -> dict:
        t = self.tunnel
        return {
            "offer_mb": self.offer_bytes // MB,
            "ggml_rpc": self.lender.endpoint if self.lender is not None else None,  # on loopback only
            "tunnel_port": t.port if t else None,
            "reserved_mb": (t.reserved() // MB) if t else 0,
            "holders": [{"peer": g.holder, "mb": g.nbytes // MB} for g in (t.grants() if t else [])],
            "streams": t.streams if t else 0,
            "tunnel": t.stats.to_dict() if t else {},
            "refused": dict(self.refused),
            "lender_restarts": self.restarts,
            "fresh_servers": self.fresh_servers,
        }

    def methods(self) -> dict:
        return {"lend.reserve": unary(self._reserve), "lend.release": unary(self._release)}

    def _refuse(self, reason: str, message: str) -> LendRefused:
        self.refused[reason] += 1
        return LendRefused(message)

    async def _reserve(self, args: dict, ctx: CallContext) -> dict:
        want, build = args.get("bytes"), args.get("build")
        if not isinstance(want, int) or isinstance(want, bool) or want < 1:
            raise self._refuse("bad_request", "lend.reserve needs bytes: a positive integer")
        if not isinstance(build, str) or len(build) > 64:
            raise self._refuse("bad_request", "lend.reserve needs build: the caller's engine build")
        if build != self.build:
            raise self._refuse("build", f"this lender runs {self.build}, the caller {build}: ggml's RPC protocol "
                               "differs between builds; upgrade one of them")
        if ctx.transport_key is None:
            raise self._refuse("no_key", "a reservation is bound to a CurveZMQ key; this call came without one")
        tunnel = self.tunnel
        if tunnel is None or self.lender is None or not self.lender.alive():
            raise self._refuse("down", "this peer's ggml RPC server is not running; try another lender")
        if want > self.offer_bytes:
            raise self._refuse("too_much", f"asked for {want / MB:.0f} MB; this peer lends {self.offer_bytes / MB:.0f} MB")
        holder = peer_id_text(ctx.sender)
        others = [g for g in tunnel.grants() if g.holder != holder]
        if others:
            raise self._refuse("busy", f"lending to {others[0].holder} already (a ggml RPC server serves one "
                               "client at a time); try another lender")
        tunnel.revoke_key(ctx.transport_key)  # a re-plan: its earlier grant goes
        for g in tunnel.grants():
            if g.holder == holder:
                tunnel.release(g.token)
        if self._served:  # a fresh server for each reservation: ggml's keeps what earlier clients had
            await self._restart_server("a new reservation")
            self.fresh_servers += 1
        self._served = True
        grant = tunnel.grant(ctx.transport_key, holder, want)
        self.reserves += 1
        log.info("lending %.0f MB to %s", want / MB, holder)
        return {"token": grant.token, "port": tunnel.port, "bytes": want}

    async def _release(self, args: dict, ctx: CallContext) -> dict:
        token = args.get("token")
        if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
            raise self._refuse("bad_request", f"lend.release needs token: {TOKEN_BYTES} bytes")
        holder = peer_id_text(ctx.sender)
        tunnel = self.tunnel
        mine = [g for g in (tunnel.grants() if tunnel else []) if g.token == token and g.holder == holder]
        if mine:
            tunnel.release(token)
        return {"released": bool(mine)}

    async def _watch(self) -> None:
        while True:
            await self._clock.sleep(self.check_s)
            try:
                await self._check()
            except Exception:  # a bug here must not stop the lending; it is logged
                log.exception("lending check failed")

    async def _check(self) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        live = {m.peer_id for m in self._members() if m.live and not m.revoked}
        for g in tunnel.grants():
            if g.holder not in live or self._refuse_key(g.key):
                log.info("%s is no longer a live member: its reservation and streams end", g.holder)
                tunnel.revoke_key(g.key)
        if self.lender is not None and not self.lender.alive() and not self._replacing.locked():
            log.warning("the ggml RPC server exited (%s); starting it again", self.lender.process.returncode)
            for g in tunnel.grants():
                tunnel.revoke_key(g.key)
            await self._restart_server("it exited")
            self.restarts += 1

    async def _restart_server(self, why: str) -> None:
        """A new ggml RPC server process in place of the old one (its weight cache on disk
        stays). The server keeps the memory of the buffers an earlier client allocated
        after that client is gone (measured: 28.5 MiB after one load of 15 slots of the
        default model, 57.2 after a second), so each reservation gets a fresh one."""
        from mesh.inference.rpc_lender import start_lender

        async with self._replacing:  # the watch does not take the old one's exit for a crash
            log.info("starting a fresh ggml RPC server (%s)", why)
            old = self.lender
            if old is not None:
                await asyncio.to_thread(old.stop)
            self.lender = await asyncio.to_thread(
                start_lender, cache_dir=self.cache_dir, offer_bytes=self.offer_bytes, threads=self._threads)
            self.tunnel.target_port = self.lender.port
