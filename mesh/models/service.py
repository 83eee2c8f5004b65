"""``ModelService``: the ``models.*`` RPC methods a peer serves, and pulls it runs.

For any member of the mesh (every call is already verified against its sender):

- ``models.list``: the models in this peer's store (and what its engine has loaded).
- ``models.manifest`` ``{model}``: the model's manifest, signed by this peer.
- ``models.piece`` ``{sha256, index}`` (streaming): the piece's bytes in chunks that fit
  an RPC frame, then ``{n}``.
- ``models.bulk`` ``{sha256, key}``: a ticket for the bulk piece stream
  (``mesh.models.bulk_wire``): ``{port, key, ticket}``. Pulls use it first, one stream per
  worker, and fall back to ``models.piece`` for a source that has none or whose port
  cannot be reached.

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

Counters (``counts``): pieces and bytes served (both paths), pulls done and failed, bad
pieces refused, manifests refused, bulk sessions served and refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.clock import Clock, SystemClock
from mesh.errors import BackendBusy, InvalidRequest, ManifestError, MeshError, ModelError, ModelNotFound, RemoteError
from mesh.identity.keys import Identity, peer_id_text
from mesh.models import bulk_wire
from mesh.models.bulk import BulkConnection, BulkServer
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
PROGRESS_EVERY_S = 0.1  # a pull's progress reaches its caller at most this often (each is a signed frame)
PER_SOURCE = 4  # pieces in flight per source: a bulk stream asks for its next piece only after
                # the last one came, so one stream per worker keeps both ends busy (2: 425 MB/s, 4-6: 460-500)


class ModelService:
    def __init__(self, *, store: ModelStore, identity: Identity, members, pool, is_local: Callable[[bytes], bool],
                 loaded: Callable[[], list[str]] = list, clock: Clock | None = None,
                 pull_rate: float = 0.0, per_source: int = PER_SOURCE, counts: dict[str, int] | None = None,
                 bulk: BulkServer | None = None) -> None:
        self.store = store
        self.identity = identity
        self.members = members  # mesh.gossip.service.Membership: live_addresses()
        self.pool = pool  # mesh.rpc.pool.PeerPool
        self.is_local = is_local
        self.loaded = loaded  # names of the models this peer's engine serves now
        self.clock = clock or SystemClock()
        self.pull_rate = pull_rate  # bytes/s, 0: no cap (--pull-rate)
        self.per_source = per_source
        self.counts = counts if counts is not None else model_counts()
        self.bulk = bulk  # this peer's bulk piece stream (None: pieces only as models.piece)
        self._pulls: dict[str, asyncio.Lock] = {}

    def methods(self) -> dict[str, Method]:
        return {
            "models.list": unary(self.list_here), "models.manifest": unary(self.manifest),
            "models.piece": streaming(self.piece), "models.mesh": unary(self.mesh),
            "models.add": unary(self.add), "models.rm": unary(self.remove), "models.pin": unary(self.pin),
            "models.pull": streaming(self.pull), "models.bulk": unary(self.bulk_ticket),
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

    async def bulk_ticket(self, args: dict[str, Any], ctx: CallContext) -> dict:
        if self.bulk is None:
            raise InvalidRequest("this peer serves pieces only as models.piece")
        sha, key = bulk_args(args)
        if not self.store.has(sha):
            raise ModelNotFound(f"no model {sha[:12]} on this peer")
        m = self.store.manifest(sha)
        private, public = bulk_wire.new_key_pair()
        ticket = self.bulk.grants.ticket()
        try:
            keys = bulk_wire.derive_keys(private, key, ticket=ticket, sha256=m.sha256, puller=ctx.sender,
                                         source=self.identity.peer_id)
        except bulk_wire.BulkStreamError as e:
            raise InvalidRequest(str(e)) from None
        try:
            self.bulk.grant(ctx.sender, sha, keys, ticket, path=str(self.store.path(sha)), size=m.size,
                            piece_size=m.piece_size)
        except bulk_wire.BulkStreamError as e:
            raise BackendBusy(str(e)) from None
        return {"port": self.bulk.port, "key": public, "ticket": ticket}

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
        shown, held = -PROGRESS_EVERY_S, None
        try:
            while (update := await updates.get()) is not None:
                now = self.clock()
                last = update.pieces_done == update.pieces
                # only the newest of a burst, at most every PROGRESS_EVERY_S, and the last
                if updates.empty() and (last or now - shown >= PROGRESS_EVERY_S):
                    shown, held = now, None
                    yield {"p": update.to_wire()}
                else:
                    held = update
            if held is not None:  # the newest came in one burst with the pull's end (a slow caller)
                yield {"p": held.to_wire()}
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
            finally:
                for fetch in sources.values():
                    fetch.close()
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
        return first, {peer: SourceFetch(self.pool.client(holders[peer][0]), holders[peer][0], first,
                                         puller=self.identity.peer_id, source=holders[peer][2])
                       for peer in agreed}


def model_counts() -> dict[str, int]:
    """The counters of a peer's model service (kept across ``mesh rotate``)."""
    return {"pieces_served": 0, "bytes_served": 0, "pulls_ok": 0, "pulls_failed": 0, "bad_pieces": 0,
            "manifests_refused": 0, "bulk_sessions": 0, "bulk_refused": 0, "bulk_pieces_served": 0}


class SourceFetch:
    """One source's pieces: over bulk streams (one per worker, kept open between pieces)
    while the source offers them, else as ``models.piece`` RPC chunks. A source without
    ``models.bulk`` (an older peer), or whose bulk port cannot be reached (a firewall
    that lets only the RPC port through), is asked over RPC for the rest of the pull."""

    def __init__(self, client, address: str, manifest: Manifest, *, puller: bytes, source: bytes) -> None:
        self.client = client
        self.host = address.removeprefix("tcp://").rsplit(":", 1)[0]
        self.manifest = manifest
        self.puller = puller
        self.source = source
        self.use_bulk = True
        self.bulk_pieces = 0
        self._idle: list[BulkConnection] = []
        self._open: set[BulkConnection] = set()

    async def __call__(self, index: int, into=None):
        """Piece ``index``: decrypted into ``into`` when given and the piece comes over a
        bulk stream (a memoryview of it), else bytes."""
        if self.use_bulk:
            conn = self._idle.pop() if self._idle else await self._connect()
            if conn is not None:
                try:
                    data = await asyncio.to_thread(conn.get, index, self.manifest.piece_range(index)[1], into)
                except BaseException:
                    self._open.discard(conn)
                    conn.close()
                    raise
                self._idle.append(conn)
                self.bulk_pieces += 1
                return data
        return await self._rpc(index)

    async def _connect(self) -> BulkConnection | None:
        """A new bulk stream, or None (and RPC from now on) when the source has none."""
        private, public = bulk_wire.new_key_pair()
        sha = self.manifest.sha_hex
        try:
            answer = await self.client.call("models.bulk", {"sha256": sha, "key": public}, timeout_s=LIST_TIMEOUT_S)
        except BackendBusy:
            return None  # too many tickets out: this piece over RPC
        except (InvalidRequest, RemoteError) as e:
            if isinstance(e, RemoteError) and e.code != "unknown_method":
                raise
            return self._no_bulk(f"it has none ({e})")
        checked = bulk_answer(answer)
        if checked is None:
            return self._no_bulk("a malformed models.bulk answer")
        port, key, ticket = checked
        try:
            keys = bulk_wire.derive_keys(private, key, ticket=ticket, sha256=self.manifest.sha256,
                                         puller=self.puller, source=self.source)
            conn = await asyncio.to_thread(BulkConnection.open, self.host, port, ticket, keys,
                                           self.manifest.piece_size, PIECE_TIMEOUT_S)
        except (bulk_wire.BulkStreamError, OSError) as e:
            return self._no_bulk(f"its bulk port {port} cannot be used ({e})")
        self._open.add(conn)
        return conn

    def _no_bulk(self, why: str) -> None:
        self.use_bulk = False
        log.warning("pieces from %s over RPC: %s", peer_id_text(self.source)[:12], why)
        return None

    async def _rpc(self, index: int) -> bytes:
        parts: list[bytes] = []
        async with self.client.stream("models.piece", {"sha256": self.manifest.sha_hex, "index": index},
                                      timeout_s=PIECE_TIMEOUT_S) as call:
            async for chunk in call:
                d = chunk.get("d") if isinstance(chunk, dict) else None
                if not isinstance(d, bytes):
                    raise ModelError("a models.piece chunk without bytes")
                parts.append(d)
        return b"".join(parts)

    def close(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()


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


def bulk_args(args: Any) -> tuple[str, bytes]:
    """(sha256, key) of a ``models.bulk`` call; ``InvalidRequest`` otherwise."""
    sha, key = (args.get("sha256"), args.get("key")) if isinstance(args, dict) else (None, None)
    if not (isinstance(sha, str) and SHA_HEX.match(sha)) or not (isinstance(key, bytes) and len(key) == 32):
        raise InvalidRequest("models.bulk needs sha256 (64 hex digits) and key (32 bytes, X25519)")
    return sha, key


def bulk_answer(answer: Any) -> tuple[int, bytes, bytes] | None:
    """(port, key, ticket) of a source's ``models.bulk`` answer, or None when malformed."""
    if not isinstance(answer, dict):
        return None
    port, key, ticket = answer.get("port"), answer.get("key"), answer.get("ticket")
    if type(port) is not int or not 0 < port < 65536 or not (isinstance(key, bytes) and len(key) == 32) \
            or not (isinstance(ticket, bytes) and len(ticket) == bulk_wire.TICKET_BYTES):
        return None
    return port, key, ticket


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
