"""``ModelSet``: several models on one peer, loaded on demand within a memory budget.

The peer's first model (``--model``, or the default) is the *primary*: started with the
peer and kept loaded, as a single-model peer always was. Every other model it can serve
(more ``--model`` files, and every model of its model store) is *available*: on disk,
loaded when a request names it (``GenerationRequest.model``, set by the router from the
candidate it chose), each in an engine process of its own (``factory(path, name)``;
the engine answers under that name, not its file's: a store blob is named by its hash), and
unloaded again after ``keep_alive_s`` without a request, unless pinned
(``mesh models pin``).

Memory: a model takes about its file size times ``RAM_FACTOR`` plus ``RAM_OVERHEAD``
(weights, KV cache, the engine process). Loading one that does not fit ``ram_bytes``
(``--models-ram``) first unloads idle unpinned models, least recently used first; when
that cannot make room, the request is refused as busy, saying why, and the router tries
elsewhere.

Gossip (``models_info``): each model with ``loaded`` and, when cold, ``load_s``: its last
measured load, or an estimate from its size (``LOAD_BYTES_PER_S``) until it has loaded
once. The router adds that to a cold candidate's expected time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mesh.clock import SYSTEM, Clock
from mesh.errors import BackendBusy, InvalidRequest, MeshError
from mesh.gossip.view import ModelInfo
from mesh.inference.backend import (
    ENGINE_FEATURES,
    Backend,
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    TextChunk,
)
from mesh.inference.embedding import EmbeddingRequest, Embeddings

log = logging.getLogger("mesh.models")

RAM_FACTOR = 1.2
RAM_OVERHEAD = 96 * 1024 * 1024
LOAD_BYTES_PER_S = 400e6  # a first estimate of a load (page cache cold), replaced once measured
LOAD_FIXED_S = 1.0  # engine process start and warm-up
KEEP_ALIVE_CHECK_S = 1.0


@dataclass(frozen=True)
class Servable:
    """A model this peer can serve (from the catalog)."""

    name: str
    path: Path
    size: int
    parameters: int = 0
    quantisation: str = ""
    context_length: int = 0
    pinned: bool = False


@dataclass
class _Slot:
    model: Servable
    backend: Backend | None = None
    loading: asyncio.Task | None = None
    in_flight: int = 0
    last_used: float = 0.0
    load_s: float | None = None  # measured
    loads: int = 0
    unloads: int = 0
    problem: str = ""  # the last load's failure

    @property
    def ram(self) -> int:
        return int(self.model.size * RAM_FACTOR) + RAM_OVERHEAD


@dataclass
class ModelSetCounts:
    loads: int = 0
    unloads: int = 0
    refused_ram: int = 0
    by_model: dict[str, int] = field(default_factory=dict)  # requests served per model


class ModelSet:
    def __init__(self, primary: Backend, *, catalog: Callable[[], list[Servable]],
                 factory: Callable[[Path, str], Backend], ram_bytes: int, keep_alive_s: float = 300.0,
                 clock: Clock = SYSTEM) -> None:
        if ram_bytes < 0 or keep_alive_s < 0:
            raise ValueError("ram_bytes and keep_alive_s cannot be negative")
        self.primary = primary
        self.catalog = catalog
        self.factory = factory
        self.ram_bytes = ram_bytes
        self.keep_alive_s = keep_alive_s
        self.clock = clock
        self.counts = ModelSetCounts()
        self._slots: dict[str, _Slot] = {}
        self._catalog_at = -1e9
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- lifecycle (Peer.start / Peer.stop)

    async def start(self) -> None:
        start = getattr(self.primary, "start", None)
        if start is not None:
            await start()
        self._task = asyncio.get_running_loop().create_task(self._keep_alive_loop(), name="models-keep-alive")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for slot in self._slots.values():
            if slot.loading is not None:
                slot.loading.cancel()
            await self._unload(slot)
        await self.primary.aclose()

    # -- Backend protocol: the primary's face, everyone's load

    @property
    def capabilities(self) -> Capabilities:
        caps = self.primary.capabilities
        if caps.parallel < 1:  # a primary serving nothing (a --model NAME not pulled yet): each engine runs one
            caps = replace(caps, parallel=1)
        return caps

    def load(self) -> Load:
        loads = [self.primary.load()] + [s.backend.load() for s in self._slots.values() if s.backend is not None]
        return Load(running=sum(x.running for x in loads), waiting=sum(x.waiting for x in loads))

    def status(self) -> EngineStatus:
        return self.primary.status()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        name = request.model
        if name is None or name == self.primary.capabilities.model:
            async for item in self.primary.stream(request):
                yield item
            return
        slot = self._slot(name)
        slot.in_flight += 1
        try:
            backend = await self._ensure_loaded(slot)
            self.counts.by_model[name] = self.counts.by_model.get(name, 0) + 1
            async for item in backend.stream(request):
                yield item
        finally:
            slot.in_flight -= 1
            slot.last_used = self.clock()

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embed with the model ``request.model`` names (loading it on demand, as ``stream``)."""
        name = request.model
        if name is None or name == self.primary.capabilities.model:
            return await _embed_with(self.primary, request)
        slot = self._slot(name)
        slot.in_flight += 1
        try:
            backend = await self._ensure_loaded(slot)
            self.counts.by_model[name] = self.counts.by_model.get(name, 0) + 1
            return await _embed_with(backend, request)
        finally:
            slot.in_flight -= 1
            slot.last_used = self.clock()

    # -- what gossip says

    def models_info(self) -> list[ModelInfo]:
        """Every model this peer serves: the primary (when serving), then the others,
        loaded or cold with their expected load time."""
        out: list[ModelInfo] = []
        caps = self.primary.capabilities
        if self.primary.status().serving:
            out.append(ModelInfo(name=caps.model, parameters=caps.parameters, quantisation=caps.quantisation,
                                 context_length=caps.context_length, tokens_per_s=round(caps.tokens_per_s, 1),
                                 features=caps.features))
        self._refresh()
        for slot in self._slots.values():
            m = slot.model
            if m.name == caps.model:
                continue
            loaded = slot.backend is not None and slot.backend.status().serving
            tps = slot.backend.capabilities.tokens_per_s if slot.backend is not None else 0.0
            out.append(ModelInfo(name=m.name, parameters=m.parameters, quantisation=m.quantisation,
                                 context_length=max(m.context_length, 1), tokens_per_s=round(tps, 1),
                                 loaded=loaded, load_s=0.0 if loaded else self.expected_load_s(slot),
                                 features=ENGINE_FEATURES))  # a store model runs in a llama.cpp engine
        return out

    def expected_load_s(self, slot: _Slot) -> float:
        if slot.load_s is not None:
            return slot.load_s
        return LOAD_FIXED_S + slot.model.size / LOAD_BYTES_PER_S

    def snapshot(self) -> list[dict]:
        """For ``mesh info`` / status: every model with its state."""
        self._refresh()
        rows = [{"name": self.primary.capabilities.model, "state": "loaded (primary)"}]
        for slot in self._slots.values():
            state = ("loading" if slot.loading is not None else "loaded" if slot.backend is not None else "on disk")
            rows.append({"name": slot.model.name, "state": state, "in_flight": slot.in_flight,
                         "loads": slot.loads, "unloads": slot.unloads, "load_s": slot.load_s,
                         "pinned": slot.model.pinned, "problem": slot.problem})
        return rows

    # -- loading and unloading

    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._catalog_at < 1.0:
            return
        self._catalog_at = now
        primary = self.primary.capabilities.model
        seen = set()
        for m in self.catalog():
            if m.name == primary or m.name in seen:
                continue
            seen.add(m.name)
            slot = self._slots.get(m.name)
            if slot is None:
                self._slots[m.name] = _Slot(m, last_used=self.clock())
            elif slot.model != m and (slot.backend is None or slot.model.path == m.path):
                slot.model = m  # pinned or unpinned; a loaded model keeps its file until it unloads
        for name in [n for n, s in self._slots.items() if n not in seen and s.backend is None and s.loading is None]:
            del self._slots[name]  # removed from the store, and not loaded

    def _slot(self, name: str) -> _Slot:
        self._refresh(force=name not in self._slots)
        slot = self._slots.get(name)
        if slot is None:
            raise InvalidRequest(f"this peer serves no model {name!r}")
        return slot

    async def _ensure_loaded(self, slot: _Slot) -> Backend:
        if slot.backend is not None:
            return slot.backend
        if slot.loading is None:
            slot.loading = asyncio.get_running_loop().create_task(self._load(slot), name=f"load-{slot.model.name}")
        task = slot.loading
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                slot.loading = None

    async def _load(self, slot: _Slot) -> Backend:
        await self._make_room(slot)
        t0 = time.monotonic()
        log.info("loading %s on demand (%.0f MB)", slot.model.name, slot.model.size / 1e6)
        backend = self.factory(slot.model.path, slot.model.name)
        try:
            start = getattr(backend, "start", None)
            if start is not None:
                await start()
            if not backend.status().serving:
                raise BackendBusy(f"model {slot.model.name} could not be loaded here: {backend.status().reason}")
        except BaseException as e:
            slot.problem = str(e)
            await backend.aclose()
            raise
        slot.load_s = time.monotonic() - t0
        slot.loads += 1
        self.counts.loads += 1
        slot.backend = backend
        slot.problem = ""
        slot.last_used = self.clock()
        log.info("loaded %s in %.1f s", slot.model.name, slot.load_s)
        return backend

    async def _make_room(self, slot: _Slot) -> None:
        def used() -> int:
            return self._primary_ram() + sum(s.ram for s in self._slots.values()
                                             if s is not slot and (s.backend is not None or s.loading is not None))

        idle = sorted((s for s in self._slots.values() if s is not slot and s.backend is not None
                       and s.in_flight == 0 and not s.model.pinned), key=lambda s: s.last_used)
        while used() + slot.ram > self.ram_bytes and idle:
            victim = idle.pop(0)
            log.info("unloading %s to make room for %s", victim.model.name, slot.model.name)
            await self._unload(victim)
        if used() + slot.ram > self.ram_bytes:
            self.counts.refused_ram += 1
            raise BackendBusy(
                f"model {slot.model.name} needs about {slot.ram / 1e9:.2f} GB and only "
                f"{max(self.ram_bytes - used(), 0) / 1e9:.2f} GB of the --models-ram budget "
                f"({self.ram_bytes / 1e9:.2f} GB) is free with the models in use loaded; try another peer, "
                "or raise --models-ram")

    def _primary_ram(self) -> int:
        path = getattr(self.primary, "model_path", None)
        try:
            return int(Path(path).stat().st_size * RAM_FACTOR) + RAM_OVERHEAD if path else 0
        except OSError:
            return 0

    async def _unload(self, slot: _Slot) -> None:
        backend, slot.backend = slot.backend, None
        if backend is None:
            return
        slot.unloads += 1
        self.counts.unloads += 1
        try:
            await backend.aclose()
        except MeshError as e:
            log.warning("unloading %s: %s", slot.model.name, e)

    async def _keep_alive_loop(self) -> None:
        while not self._closed:
            await self.clock.sleep(KEEP_ALIVE_CHECK_S)
            now = self.clock()
            self._refresh()
            for slot in list(self._slots.values()):
                if (slot.backend is not None and slot.in_flight == 0 and not slot.model.pinned
                        and now - slot.last_used >= self.keep_alive_s):
                    log.info("unloading %s: idle for %.0f s (--keep-alive)", slot.model.name, now - slot.last_used)
                    await self._unload(slot)


async def _embed_with(backend: Backend, request: EmbeddingRequest) -> Embeddings:
    embed = getattr(backend, "embed", None)
    if embed is None:  # it does not offer "embed": routing does not send it one
        raise InvalidRequest(f"model {backend.capabilities.model} cannot make embeddings")
    return await embed(request)
