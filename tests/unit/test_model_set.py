"""Several models on one peer (mesh.inference.model_set): the primary serves what names
no model, another model loads when a request names it, within the memory budget (idle
ones are unloaded first, least recently used), and unloads after its keep-alive unless
pinned. The engines are scripted backends (one per load, so loads and closes are
counted); time is a manual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh.errors import BackendBusy, InvalidRequest
from mesh.inference.backend import FinalStats, GenerationRequest, Message
from mesh.inference.model_set import RAM_FACTOR, RAM_OVERHEAD, ModelSet, Servable
from mesh.testing import ScriptedBackend
from mesh.testing.clock import ManualClock

MB = 1_000_000


class Engines:
    """The factory: a scripted engine per load, answering with its model's name."""

    def __init__(self):
        self.started: list[str] = []
        self.closed: list[str] = []

    def __call__(self, path: Path, name: str):
        assert path.stem == name
        engines = self

        class Engine(ScriptedBackend):
            async def start(self):
                engines.started.append(name)

            async def aclose(self):
                engines.closed.append(name)
                await super().aclose()

        return Engine([name], model=name)


def servable(name, size_mb=100, pinned=False):
    return Servable(name=name, path=Path(f"/models/{name}.gguf"), size=size_mb * MB, parameters=10**8,
                    context_length=2048, pinned=pinned)


def ram_for(*sizes_mb):
    return sum(int(s * MB * RAM_FACTOR) + RAM_OVERHEAD for s in sizes_mb)


def ask(model=None):
    return GenerationRequest(messages=(Message("user", "hi"),), max_tokens=4, model=model)


async def answer(ms, model=None) -> str:
    return next(i.model for i in [x async for x in ms.stream(ask(model))] if isinstance(i, FinalStats))


def make(catalog, *, ram, keep_alive_s=60.0):
    clock = ManualClock()
    engines = Engines()
    ms = ModelSet(ScriptedBackend(["p"], model="primary"), catalog=lambda: list(catalog), factory=engines,
                  ram_bytes=ram, keep_alive_s=keep_alive_s, clock=clock)
    return ms, engines, clock


def test_a_named_model_loads_on_demand_and_gossip_says_cold_then_loaded():
    async def main():
        ms, engines, _ = make([servable("a"), servable("b")], ram=ram_for(100, 100))
        await ms.start()
        info = {m.name: m for m in ms.models_info()}
        assert info["primary"].loaded and not info["a"].loaded and info["a"].load_s > 0
        assert await answer(ms) == "primary" and engines.started == []
        assert await answer(ms, "a") == "a" and engines.started == ["a"]
        assert await answer(ms, "a") == "a" and engines.started == ["a"]  # loaded once
        info = {m.name: m for m in ms.models_info()}
        assert info["a"].loaded and info["a"].load_s == 0 and not info["b"].loaded
        with pytest.raises(InvalidRequest, match="serves no model 'zzz'"):
            await answer(ms, "zzz")
        await ms.aclose()
        assert engines.closed == ["a"]

    asyncio.run(main())


def test_the_budget_unloads_the_least_recently_used_idle_model_never_a_pinned_one():
    async def main():
        catalog = [servable("a"), servable("b"), servable("c", pinned=True), servable("d")]
        ms, engines, clock = make(catalog, ram=ram_for(100, 100))
        await ms.start()
        await answer(ms, "c")  # pinned, and the least recently used from now on
        clock.advance(1)
        await answer(ms, "a")
        clock.advance(1)
        await answer(ms, "b")  # room for two: a goes, not c
        assert engines.closed == ["a"] and ms.counts.unloads == 1
        assert {m.name for m in ms.models_info() if m.loaded} == {"primary", "b", "c"}
        clock.advance(1)
        await answer(ms, "a")  # b goes
        clock.advance(1)
        await answer(ms, "d")  # then a; c stays through all of it
        assert engines.closed == ["a", "b", "a"]
        assert {m.name for m in ms.models_info() if m.loaded} == {"primary", "c", "d"}
        await ms.aclose()

    asyncio.run(main())


def test_keep_alive_unloads_an_idle_model_but_not_a_pinned_one():
    async def main():
        ms, engines, clock = make([servable("a"), servable("p", pinned=True)], ram=ram_for(100, 100), keep_alive_s=5)
        await ms.start()
        await answer(ms, "a")
        await answer(ms, "p")
        for _ in range(4):
            clock.advance(1)
            await asyncio.sleep(0)
        assert engines.closed == []
        for _ in range(3):
            clock.advance(1)
            for _ in range(5):
                await asyncio.sleep(0)
        assert engines.closed == ["a"]
        assert {m.name: m.loaded for m in ms.models_info()} == {"primary": True, "a": False, "p": True}
        await ms.aclose()

    asyncio.run(main())


def test_a_model_too_big_for_the_budget_is_refused_as_busy_saying_why():
    async def main():
        ms, engines, _ = make([servable("big", size_mb=5000)], ram=ram_for(100))
        await ms.start()
        with pytest.raises(BackendBusy, match="--models-ram"):
            await answer(ms, "big")
        assert engines.started == [] and ms.counts.refused_ram == 1
        await ms.aclose()

    asyncio.run(main())


def test_with_nothing_loaded_yet_the_peer_still_gossips_a_readable_meta():
    # --model NAME --auto-pull: the primary serves nothing until the pull; the models it
    # offers meanwhile must not make its meta unreadable (parallel 0 with models is refused)
    from mesh.gossip.view import PeerMeta
    from mesh.inference import capabilities
    from mesh.inference.no_model import NoModel

    ms = ModelSet(NoModel(queue_limit=8), catalog=lambda: [servable("a")], factory=Engines(), ram_bytes=ram_for(100))
    meta = capabilities.snapshot(ms)
    back = PeerMeta.from_wire(meta.to_wire())
    assert [m.name for m in back.models] == ["a"] and not back.models[0].loaded and back.load.parallel >= 1
