"""A request that uses stop, logprobs or a JSON format goes only to a peer whose engine
says (in gossip) that it honours them; with none, it is refused saying why (issue 17).
Real peers on loopback with scripted backends: one declares the options, one does not."""

from __future__ import annotations

import pytest

from mesh.errors import NoAnswer
from mesh.inference.backend import ENGINE_FEATURES, GenerationRequest, TextChunk
from mesh.inference.logprobs import entry
from mesh.routing import RouteRequest
from mesh.rpc.server import Final
from mesh.testing import ScriptedBackend
from support.loopmesh import run, start_mesh, wait_for


async def answer_of(peer, gen: GenerationRequest) -> dict:
    final = None
    async for ev in peer.router.ask(gen, RouteRequest.for_generation(gen, local_only=True)):
        if isinstance(ev, Final):
            final = ev.data
    return final


def test_options_are_routed_only_to_peers_that_honour_them(tmp_path):
    async def main():
        plain = ScriptedBackend(["plain"], model="plain", tokens_per_s=5000.0)  # faster: the usual choice
        able = ScriptedBackend(["able"], model="able", tokens_per_s=10.0, features=ENGINE_FEATURES)
        peers = await start_mesh(tmp_path, [plain, able])
        try:
            first = peers[0]
            await wait_for(lambda: any(model.features for m in first.membership_service.view() if not m.is_self
                                       for model in m.models))
            for gen in (GenerationRequest.from_prompt("q", stop=("x",)),
                        GenerationRequest.from_prompt("q", logprobs=True, top_logprobs=2)):
                for _ in range(3):
                    assert (await answer_of(first, gen))["model"] == "able"
            assert able.requests[-1].logprobs and able.requests[-1].top_logprobs == 2  # the options travelled
            assert any(r.stop == ("x",) for r in able.requests)
            assert not plain.requests
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


class LogprobsBackend(ScriptedBackend):
    """A scripted answer whose chunks carry a logprob entry per token, as an engine's do."""

    async def stream(self, request):
        async for item in super().stream(request):
            if isinstance(item, TextChunk) and request.logprobs:
                item = TextChunk(item.text, (entry(item.text.encode(), -0.5, [(b"x", -1.0)] * request.top_logprobs),))
            yield item


def test_logprobs_come_back_from_a_remote_peer_with_its_text(tmp_path):
    async def main():
        peers = await start_mesh(tmp_path, [ScriptedBackend(["plain"], model="plain"),
                                            LogprobsBackend(["He", "llo"], model="able", features=ENGINE_FEATURES)])
        try:
            first = peers[0]
            await wait_for(lambda: any(model.features for m in first.membership_service.view() if not m.is_self
                                       for model in m.models))
            gen = GenerationRequest.from_prompt("q", logprobs=True, top_logprobs=1)
            events = [ev async for ev in first.router.ask(gen, RouteRequest.for_generation(gen, local_only=True))]
            final = events[-1].data
            assert final["text"] == "Hello" and final["peer"] == peers[1].router.self_id
            assert [e[0] for e in final["logprobs"]] == [b"He", b"llo"]  # over RPC generate, checked on arrival
            streamed = [e for ev in events if isinstance(ev, dict) and "lp" in ev for e in ev["lp"]]
            assert streamed == final["logprobs"] and streamed[0][2] == [[b"x", -1.0]]
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_with_no_peer_able_the_request_is_refused_saying_why(tmp_path):
    async def main():
        peers = await start_mesh(tmp_path, [ScriptedBackend(["plain"], model="plain")])
        try:
            with pytest.raises(NoAnswer) as e:
                await answer_of(peers[0], GenerationRequest.from_prompt("q", stop=("x",)))
            assert "cannot honour" in str(e.value) and "stop" in str(e.value)
            assert (await answer_of(peers[0], GenerationRequest.from_prompt("q")))["text"] == "plain"
        finally:
            await peers[0].stop(grace_s=0)

    run(main())
