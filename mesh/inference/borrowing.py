"""A model too big for this peer, split across lenders (issue 16): the plan, made again
before every engine start.

``SplitPlanner.prepare`` is ``EngineBackend``'s ``prepare`` hook. Before each start of
the engine it:

1. lets go of the previous plan (closes its tunnel ports, releases its reservations);
2. reads the lenders from gossip (``PeerMeta.lend``: free memory, tunnel port, engine
   build; only live members of this peer's build);
3. works out how many slots must leave (``split_plan.remote_slots``: what stays must
   fit ``--models-ram``), picks the fewest lenders that can hold them
   (``choose_lenders``: most free memory first, then least busy) and spreads the slots
   in proportion to memory (``spread``, ``plan_layers``);
4. asks each lender over signed RPC to reserve its share (``lend.reserve``), opens a
   ``TunnelPort`` to each with the grant it got, and returns the engine arguments that
   put the remote slots on those ports.

Any step that cannot be done raises ``SplitUnavailable`` saying why (no lender, not
enough memory, a refusal); the engine then waits and the planner tries again, so the
model comes back when a lender joins. A lender lost mid-answer kills the engine (ggml's
RPC client aborts on a dead socket); the supervisor restarts it through a new plan.

Link speed: the round trip gossip's probes measure (``Membership.rtts``); every token
crosses each chosen link, so one near lender beats a far one, and fewer lenders beat
more. Bandwidth is not measured (a token's traffic is small: the logits row and the
activations, about 220 KB with the default model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mesh.errors import MeshError, SplitUnavailable
from mesh.gossip.view import MemberView, SplitPart
from mesh.identity.transport import TransportKeys, key_from_text
from mesh.inference.split_plan import (
    LenderCandidate,
    Offer,
    choose_lenders,
    plan_layers,
    remote_slots,
    slot_bytes,
    spread,
)
from mesh.rpc.tunnel import TunnelPort

log = logging.getLogger("mesh.inference.borrowing")

MB = 1 << 20
PLAN_TIMEOUT_S = 60.0
RESERVE_TIMEOUT_S = 10.0


def model_layers(path: Path) -> int:
    """The repeating layers of a GGUF model, from its header."""
    from mesh.inference.models import read_gguf_metadata

    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture", "")
    try:
        n = int(meta.get(f"{arch}.block_count", ""))
    except ValueError:
        raise SplitUnavailable(f"{path.name}: its header says no layer count ({arch}.block_count); "
                               "it cannot be split") from None
    if n < 1:
        raise SplitUnavailable(f"{path.name} has no layers to split")
    return n


def needs_split(path: Path, budget_bytes: int) -> bool:
    """Whether the model file is bigger than what this peer may hold."""
    try:
        return Path(path).stat().st_size > budget_bytes
    except OSError:
        return False


class SplitPlanner:
    def __init__(
        self,
        *,
        path: Path,
        budget_bytes: int,
        self_id: Callable[[], str | None],
        self_name: str,
        members: Callable[[], list[MemberView] | None],
        rtts: Callable[[], dict[str, float]],
        call: Callable,  # async (address, method, args, timeout_s) -> dict
        transport: TransportKeys,
        loop: asyncio.AbstractEventLoop,
        build: str,
    ) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.file_bytes = self.path.stat().st_size
        self.n_layers = model_layers(self.path)
        self._self_id = self_id
        self._self_name = self_name
        self._members = members
        self._rtts = rtts
        self._call = call
        self._transport = transport
        self._loop = loop
        self.build = build
        self._ports: list[TunnelPort] = []
        self._held: list[tuple[str, bytes]] = []  # (lender address, grant token)
        self.layout: tuple[SplitPart, ...] = ()  # the current plan, for gossip and status
        self.plans = 0
        self.last_problem: str | None = None

    # the supervisor thread
    def prepare(self) -> list[str]:
        fut = asyncio.run_coroutine_threadsafe(self.plan(), self._loop)
        try:
            return fut.result(PLAN_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()
            raise SplitUnavailable(f"planning the split took over {PLAN_TIMEOUT_S:.0f} s") from None

    async def plan(self) -> list[str]:
        try:
            args = await self._plan()
        except SplitUnavailable as e:
            self.last_problem = str(e)
            self.layout = ()
            await self.release()
            raise
        self.last_problem = None
        self.plans += 1
        return args

    async def _plan(self) -> list[str]:
        await self.release()
        members = self._members()
        if members is None:
            raise SplitUnavailable("waiting for the mesh to start before planning the split")
        rtts = self._rtts()
        slot = slot_bytes(self.file_bytes, self.n_layers)
        need = remote_slots(self.file_bytes, self.n_layers, self.budget_bytes)
        candidates = [
            LenderCandidate(m.peer_id, m.name, m.address, m.transport, m.meta.lend.free_mb * MB,
                            busy=m.meta.load.running + m.meta.load.waiting, rtt_s=rtts.get(m.peer_id))
            for m in members
            if not m.is_self and m.live and not m.revoked and m.meta is not None and m.meta.lend is not None
            and m.meta.lend.build == self.build and m.address and m.transport
        ]
        need_bytes = need * slot
        chosen = choose_lenders(candidates, need_bytes)
        if not chosen:
            offered = sum(c.free_bytes for c in candidates)
            raise SplitUnavailable(
                f"{self.path.name} ({self.file_bytes / MB:.0f} MB) does not fit this peer's --models-ram "
                f"({self.budget_bytes / MB:.0f} MB): {need} of its {self.n_layers + 1} slots "
                f"({need_bytes / MB:.0f} MB) must go to lenders, and {len(candidates)} lender(s) of build "
                f"{self.build} offer {offered / MB:.0f} MB free; start a peer with --lend-memory GB")
        k = spread(self.n_layers, need, self.budget_bytes, [c.free_bytes for c in chosen])
        placement = plan_layers(self.n_layers, slot, [Offer(c.peer_id, c.free_bytes) for c in chosen],
                                max_remote=k)
        if placement.remote_layers < need:
            raise SplitUnavailable(f"the lenders' memory holds {placement.remote_layers} of the {need} slots needed")
        by_id = {c.peer_id: c for c in chosen}
        local_ports: list[str] = []
        parts = []
        try:
            for peer_id, count in zip(placement.endpoints, placement.counts, strict=True):
                c = by_id[peer_id]
                local_ports.append(await self._open(c, count * slot))
                parts.append(SplitPart(peer=c.peer_id, name=c.name, layers=count))
        except BaseException:
            await self.release()
            raise
        me = self._self_id() or ""
        self.layout = (SplitPart(peer=me, name=self._self_name, layers=self.n_layers + 1 - placement.remote_layers),
                       *parts)
        log.info("split plan for %s: %s", self.path.name,
                 ", ".join(f"{p.name or p.peer[:8]} {p.layers}" for p in self.layout))
        args = ["--remote-layers", str(placement.remote_layers),
                "--tensor-split", ",".join(str(int(x)) for x in placement.tensor_split())]
        for port in local_ports:
            args += ["--rpc", port]
        return args

    async def _open(self, c: LenderCandidate, nbytes: int) -> str:
        try:
            answer = await self._call(c.address, "lend.reserve", {"bytes": nbytes, "build": self.build},
                                      RESERVE_TIMEOUT_S)
        except MeshError as e:
            raise SplitUnavailable(f"lender {c.name or c.peer_id} refused {nbytes / MB:.0f} MB: {e}") from e
        token, port = answer.get("token"), answer.get("port")
        if not isinstance(token, bytes) or not isinstance(port, int) or not 0 < port < 65536:
            raise SplitUnavailable(f"lender {c.name or c.peer_id} answered lend.reserve without a token and port")
        self._held.append((c.address, token))
        host = c.address.removeprefix("tcp://").rsplit(":", 1)[0]
        tunnel = TunnelPort(f"tcp://{host}:{port}", key_from_text(c.transport), self._transport, token)
        local = await asyncio.to_thread(tunnel.start)
        self._ports.append(tunnel)
        return local

    async def release(self) -> None:
        """Close the tunnel ports and give the reservations back (best effort: a lender
        that is gone frees them itself when it sees this peer dead)."""
        ports, self._ports = self._ports, []
        for p in ports:
            await asyncio.to_thread(p.close)
        held, self._held = self._held, []
        for address, token in held:
            try:
                await self._call(address, "lend.release", {"token": token}, 3.0)
            except Exception as e:  # noqa: BLE001 - stopping: the pool may be closed already
                log.info("releasing a reservation at %s: %s", address, e)

    def tunnel_stats(self) -> list[dict]:
        return [{"endpoint": p.endpoint, **p.stats.to_dict()} for p in self._ports]
