"""``ModelService``: the ``models.*`` RPC methods a peer serves, and pulls it runs.

For any member of the mesh (every call is already verified against its sender):

- ``models.list``: the models in this peer's store (and what its engine has loaded).
- ``models.manifest`` ``{model}``: the model's manifest, signed by this peer.
- ``models.piece`` ``{sha256, index}`` (streaming): the piece's bytes in chunks that fit
  an RPC frame, then ``{n}``.

For the CLI on this peer's machine only (``is_local``), since they change this peer's
disk or fan out to the whole mesh:

- ``models.mesh``: every model in the mesh, asking every live member's ``models.list``.
- ``models.add`` ``{path, name?, pin?}``, ``models.rm`` ``{model}``, ``models.pin``
  ``{model, pinned}``.
- ``models.pull`` ``{model, rate?, pin?}`` (streaming): finds the members that hold the
  model, checks each one's manifest (signed by that member, the same pieces for the
  same SHA-256), and runs a ``Puller`` over them, sending progress; the final answer is
  the ``PullResult``. Cancelling the call stops the pull; the pieces fetched are kept
  and the next pull resumes from them.

Counters (``counts``): pieces and bytes served, pulls done and failed, bad pieces
refused, manifests refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.clock import Clock, SystemClock
from mesh.errors import InvalidRequest, ManifestError, MeshError, ModelError, ModelNotFound
from mesh.identity.keys import Identity, peer_id_text
from mesh.models.manifest import SHA_HEX, Manifest, ModelCard
from mesh.models.puller import Puller, PullProgress, PullResult
from mesh.models.rate import BytePacer
from mesh.models.store import MIN_PREFIX, ModelStore
from mesh.rpc.server import CallContext, Final, Method, streaming, unary

log = logging.getLogger("mesh.models")

CHUNK = 512 * 1024  # bytes of a piece per stream chunk: well inside an RPC frame (1 MiB)
LIST_TIMEOUT_S = 5.0
PIECE_TIMEOUT_S = 60.0
MAX_FANOUT = 16  # members asked at once by models.mesh / models.pull


class ModelService:
    def __init__(self, *, store: ModelStore, identity: Identity, members, pool, is_local: Callable[[bytes], bool],
                 loaded: Callable[[], list[str]] = list, clock: Clock | None = None,
                 pull_rate: float = 0.0, per_source: int = 2, counts: dict[str, int] | None = None) -> None:
        self.store = store
        self.identity = identity
        self.members = members  # mesh.gossip.service.Membership: live_addresses()
        self.pool = pool  # mesh.rpc.pool.PeerPool
        self.is_local = is_local
        self.loaded = loaded  # names of the models this peer's engine serves now
        self.clock = clock or SystemClock()
        self.pull_rate = pull_rate  # bytes/s, 0: no cap (--pull-rate)
        self.per_source = per_source
        self.counts = counts if counts is not None else {"pieces_served": 0, "bytes_served": 0, "pulls_ok": 0, "pulls_failed": 0,
                       "bad_pieces": 0, "manifests_refused": 0}
        self._pulls: dict[str, asyncio.Lock] = {}

    def methods(self) -> dict[str, Method]:
        return {
            "models.list": unary(self.list_here), "models.manifest": unary(self.manifest),
            "models.piece": streaming(self.piece), "models.mesh": unary(self.mesh),
            "models.add": unary(self.add), "models.rm": unary(self.remove), "models.pin": unary(self.pin),
            "models.pull": streaming(self.pull),
        }

    # -- for any member

    async def list_here(self, args: dict[str, Any], ctx: CallContext) -> dict:
        return {"peer": self.identity.peer_id_text, "models": [m.to_wire() for m in self.store.list()],
                "loaded": list(self.loaded())}

    async def manifest(self, args: dict[str, Any], ctx: CallContext) -> dict:
        found = self.store.resolve(_ref(args.get("model")))
        return {"manifest": self.store.manifest(found.sha).signed_by(self.identity).to_wire()}

    async def piece(self, args: dict[str, Any], ctx: CallContext):
        sha, index = piece_args(args)
        if not self.store.has(sha):
            raise ModelNotFound(f"no model {sha[:12]} on this peer")
        data = await asyncio.to_thread(self.store.read_piece, sha, index)
        for at in range(0, len(data), CHUNK):
            yield {"d": data[at:at + CHUNK]}
        self.counts["pieces_served"] += 1
        self.counts["bytes_served"] += len(data)
        yield Final({"n": len(data)})

    # -- for this machine's CLI

    def _local(self, ctx: CallContext, what: str) -> None:
        if not self.is_local(ctx.sender):
            raise InvalidRequest(f"{what} is for the mesh CLI on this peer's machine")

    async def add(self, args: dict[str, Any], ctx: CallContext) -> dict:
        self._local(ctx, "models.add")
        path, name = args.get("path"), args.get("name")
        if not isinstance(path, str) or not path or (name is not None and not isinstance(name, str)):
            raise InvalidRequest("models.add needs path (text) and an optional name (text)")
        model = await asyncio.to_thread(self.store.add, path, name=name, pinned=bool(args.get("pin")))
        return {"model": model.to_wire()}

    async def remove(self, args: dict[str, Any], ctx: CallContext) -> dict:
        self._local(ctx, "models.rm")
        return {"model": self.store.remove(_ref(args.get("model"))).to_wire()}

    async def pin(self, args: dict[str, Any], ctx: CallContext) -> dict:
        self._local(ctx, "models.pin")
        return {"model": self.store.pin(_ref(args.get("model")), bool(args.get("pinned", True))).to_wire()}

    async def mesh(self, args: dict[str, Any], ctx: CallContext) -> dict:
        """Every model in the mesh: one row per SHA-256, with who holds it and who serves it."""
        self._local(ctx, "models.mesh")
        answers, unreachable = await self._ask_all()
        answers[self.identity.peer_id_text] = await self.list_here({}, ctx)
        rows: dict[str, dict] = {}
        for peer, answer in sorted(answers.items()):
            loaded = set(answer.get("loaded") or ())
            for m in answer.get("models") or ():
                row = rows.setdefault(m["sha256"], {**{k: m[k] for k in (
                    "sha256", "name", "family", "parameters", "quantisation", "context_length", "size")},
                    "holders": [], "loaded_on": []})
                row["holders"].append(peer)
                if m["name"] in loaded:
                    row["loaded_on"].append(peer)
        return {"models": sorted(rows.values(), key=lambda r: (r["name"], r["sha256"])),
                "peers_asked": len(answers), "unreachable": unreachable}

    async def _ask_all(self) -> tuple[dict[str, dict], list[str]]:
        """``models.list`` of every live member (at most MAX_FANOUT at once)."""
        gate = asyncio.Semaphore(MAX_FANOUT)
        answers: dict[str, dict] = {}
        unreachable: list[str] = []

        async def one(peer: bytes, address: str) -> None:
            async with gate:
                try:
                    answer = await self.pool.client(address).call("models.list", {}, timeout_s=LIST_TIMEOUT_S)
                except MeshError as e:
                    unreachable.append(f"{peer_id_text(peer)[:12]}: {e}")
                    return
            rows = list_answer(answer)
            if rows is None:
                unreachable.append(f"{peer_id_text(peer)[:12]}: a malformed models.list answer")
            else:
                answers[peer_id_text(peer)] = {**rows, "address": address, "peer_id": peer}

        async with asyncio.TaskGroup() as group:
            for peer, address in self.members.live_addresses().items():
                group.create_task(one(peer, address))
        return answers, unreachable

    async def pull(self, args: dict[str, Any], ctx: CallContext):
        self._local(ctx, "models.pull")
        ref = _ref(args.get("model"))
        rate = args.get("rate", self.pull_rate)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 0:
            raise InvalidRequest("rate is bytes per second, >= 0 (0: no cap)")
        try:
            here = self.store.resolve(ref)
            yield Final({"model": here.to_wire(), "already": True})
            return
        except ModelNotFound:
            pass
        updates: asyncio.Queue[PullProgress | None] = asyncio.Queue()
        task = asyncio.ensure_future(self.fetch(ref, rate=float(rate), pin=bool(args.get("pin")),
                                                on_progress=updates.put_nowait))
        task.add_done_callback(lambda _: updates.put_nowait(None))
        try:
            while (update := await updates.get()) is not None:
                if updates.empty():  # only the newest of a burst
                    yield {"p": update.to_wire()}
            result = await task
        finally:
            task.cancel()  # the caller went away: the pull stops, its pieces stay
        yield Final(result.to_wire())

    async def fetch(self, ref: str, *, rate: float | None = None, pin: bool = False,
                    on_progress: Callable[[PullProgress], None] | None = None) -> PullResult:
        """Pull ``ref`` from the members that hold it into the store (``models.pull``, and
        ``--auto-pull``). Errors: ``ModelNotFound``, ``ManifestError``, ``ModelStoreFull``,
        ``PullStopped``, ``InvalidRequest`` (a pull of it is already running)."""
        manifest, sources = await self._sources(ref)
        lock = self._pulls.setdefault(manifest.sha_hex, asyncio.Lock())
        if lock.locked():
            raise InvalidRequest(f"a pull of {manifest.info.name} is already running on this peer")
        async with lock:
            puller = Puller(store=self.store, manifest=manifest, sources=sources,
                            pacer=BytePacer(self.pull_rate if rate is None else rate), clock=self.clock,
                            per_source=self.per_source, on_progress=on_progress, on_bad_piece=self._bad_piece,
                            pinned=pin)
            try:
                result = await puller.run()
            except BaseException:
                self.counts["pulls_failed"] += 1
                raise
        self.counts["pulls_ok"] += 1
        log.info("pulled %s (%s, %d bytes) in %.1f s from %s", manifest.info.name, manifest.sha_hex[:12],
                 manifest.size, result.seconds, result.progress.by_source)
        return result

    def _bad_piece(self, source: str) -> None:
        self.counts["bad_pieces"] += 1
        log.warning("a piece from %s failed its SHA-256: that peer is not asked again for this model", source[:12])

    async def _sources(self, ref: str) -> tuple[Manifest, dict]:
        """The manifest the holders of ``ref`` agree on, and a fetch function per holder."""
        answers, unreachable = await self._ask_all()
        holders: dict[str, tuple[str, str, bytes]] = {}  # peer -> (address, sha, peer id)
        for peer, answer in answers.items():
            for m in answer["models"]:
                if m["name"] == ref or m["sha256"] == ref.lower() or (
                        len(ref) >= MIN_PREFIX and m["sha256"].startswith(ref.lower())):
                    holders[peer] = (answer["address"], m["sha256"], answer["peer_id"])
        shas = {sha for _, sha, _ in holders.values()}
        if not holders:
            gone = f"; {len(unreachable)} did not answer" if unreachable else ""
            raise ModelNotFound(f"no peer in the mesh has a model {ref!r} ({len(answers)} asked{gone}); "
                                "`mesh models list` shows what the mesh has")
        if len(shas) > 1:
            raise ModelNotFound(f"{ref!r} names {len(shas)} different models in the mesh "
                                f"({', '.join(sorted(s[:12] for s in shas))}); pull one by its SHA-256")
        sha = shas.pop()
        partial = self.store.partial_manifest(sha)
        manifests: dict[str, Manifest] = {}
        problems: list[str] = []

        async def fetch_manifest(peer: str, address: str, peer_id: bytes) -> None:
            try:
                answer = await self.pool.client(address).call("models.manifest", {"model": sha},
                                                               timeout_s=LIST_TIMEOUT_S)
                m = Manifest.from_wire(answer.get("manifest"), publisher=peer_id)
            except ManifestError as e:
                self.counts["manifests_refused"] += 1
                problems.append(f"{peer[:12]}: {e}")
                return
            except MeshError as e:
                problems.append(f"{peer[:12]}: {e}")
                return
            if m.sha_hex != sha:
                self.counts["manifests_refused"] += 1
                problems.append(f"{peer[:12]}: its manifest is for {m.sha_hex[:12]}, not {sha[:12]}")
                return
            manifests[peer] = m

        async with asyncio.TaskGroup() as group:
            for peer, (address, _, peer_id) in holders.items():
                group.create_task(fetch_manifest(peer, address, peer_id))
        # The pieces to agree on: a resumed pull's own, else the most common cut.
        reference = partial
        if reference is None and manifests:
            reference = max(manifests.values(), key=lambda m: sum(m.same_model(o) for o in manifests.values()))
        agreed = {p: m for p, m in manifests.items() if reference is not None and m.same_model(reference)}
        for p in set(manifests) - set(agreed):
            self.counts["manifests_refused"] += 1
            problems.append(f"{p[:12]}: its manifest does not match the others' pieces")
        if not agreed:
            raise ManifestError(f"no usable manifest for {sha[:12]} ({'; '.join(problems) or 'none answered'})")
        first = next(iter(agreed.values()))
        return first, {peer: self._fetcher(holders[peer][0], sha) for peer in agreed}

    def _fetcher(self, address: str, sha: str):
        async def fetch(index: int) -> bytes:
            parts: list[bytes] = []
            async with self.pool.client(address).stream("models.piece", {"sha256": sha, "index": index},
                                                        timeout_s=PIECE_TIMEOUT_S) as call:
                async for chunk in call:
                    d = chunk.get("d") if isinstance(chunk, dict) else None
                    if not isinstance(d, bytes):
                        raise ModelError("a models.piece chunk without bytes")
                    parts.append(d)
            return b"".join(parts)

        return fetch


def _ref(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 128:
        raise InvalidRequest("name the model: its name, its SHA-256, or a SHA-256 prefix of 12+ hex digits")
    return value.strip()


def piece_args(args: Any) -> tuple[str, int]:
    """(sha256, index) of a ``models.piece`` call; ``InvalidRequest`` otherwise."""
    sha, index = (args.get("sha256"), args.get("index")) if isinstance(args, dict) else (None, None)
    if not (isinstance(sha, str) and SHA_HEX.match(sha)) or type(index) is not int or not 0 <= index < 1 << 32:
        raise InvalidRequest("models.piece needs sha256 (64 hex digits) and index (an integer >= 0)")
    return sha, index


def list_answer(answer: Any) -> dict | None:
    """A member's ``models.list`` answer with only its well-formed rows (``models``,
    ``loaded``), or None when the answer itself is malformed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
        return None
    loaded = answer.get("loaded")
    rows = (_row(m) for m in answer["models"][:10_000])
    return {"models": [r for r in rows if r is not None],
            "loaded": [x for x in loaded[:256] if isinstance(x, str)] if isinstance(loaded, list) else []}


def _row(m: Any) -> dict | None:
    """One row of a models.list answer, checked and with only the fields we use."""
    if not (isinstance(m, dict) and isinstance(m.get("sha256"), str) and SHA_HEX.match(m["sha256"])
            and type(m.get("size")) is int and m["size"] > 0):
        return None
    try:
        card = ModelCard.from_wire(m)  # name, family, parameters, quantisation, context_length
    except ManifestError:
        return None
    return {"sha256": m["sha256"], "size": m["size"], **card.to_wire()}
