"""Embeddings go only to a peer whose model offers "embed" in gossip, over RPC
``embed.here`` when that is another peer; a failed one is retried on another peer of the
same model; with none able, the answer says so (issue 17). Real peers on loopback with
scripted backends."""

from __future__ import annotations

import pytest

from mesh.errors import GenerationError, NoAnswer
from mesh.inference.backend import EMBED
from mesh.inference.embedding import EmbeddingRequest, Embeddings, normalized, pack_vector
from mesh.routing.embed_router import embed_through, route_for_embedding
from mesh.testing import ScriptedBackend
from support.loopmesh import run, start_mesh, wait_for

DIMS = 300  # 300 inputs of these are 360 KB of vectors: two RPC chunks


def vector_of(text: str) -> list[float]:
    return normalized([float(len(text)), 1.0, float(sum(map(ord, text)) % 7)] + [0.01 * i for i in range(DIMS - 3)])


class EmbeddingBackend(ScriptedBackend):
    """A scripted backend that also embeds (deterministically), or fails to."""

    def __init__(self, *a, fail: bool = False, **kw) -> None:
        super().__init__(*a, features=(EMBED,), **kw)
        self.fail = fail
        self.embedded: list[EmbeddingRequest] = []

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self.embedded.append(request)
        if self.fail:
            raise GenerationError("the engine process died while embedding")
        return Embeddings(tuple(pack_vector(vector_of(t)) for t in request.texts), model=self.capabilities.model,
                          prompt_tokens=3 * len(request.texts))


def offered(peer, n: int) -> bool:
    return sum(1 for m in peer.membership_service.view() if not m.is_self
               for model in m.models if EMBED in model.features) >= n


async def embed(peer, texts, **pins) -> Embeddings:
    request = EmbeddingRequest(tuple(texts)).validate()
    return await embed_through(peer.router, request, route_for_embedding(request, **pins))


def test_embeddings_go_to_a_peer_that_can_embed_and_come_back_intact(tmp_path):
    async def main():
        plain = ScriptedBackend(["plain"], model="plain", tokens_per_s=5000.0)
        able = EmbeddingBackend(["able"], model="able", tokens_per_s=10.0)
        peers = await start_mesh(tmp_path, [plain, able])
        try:
            await wait_for(lambda: offered(peers[0], 1))
            texts = [f"text number {i}" for i in range(300)]
            out = await embed(peers[0], texts)
            assert out.peer == peers[1].identity.peer_id_text and out.model == "able"
            assert out.prompt_tokens == 900 and out.dimensions == DIMS
            assert out.floats() == [pytest.approx(vector_of(t), rel=1e-6) for t in texts]
            assert able.embedded[-1].model == "able"  # the router names the model chosen
            assert not plain.requests
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_a_failed_peer_is_retried_on_another_of_the_same_model(tmp_path):
    async def main():
        plain = ScriptedBackend(["plain"], model="plain")
        broken = EmbeddingBackend(["x"], model="able", tokens_per_s=5000.0, fail=True)  # scores best
        good = EmbeddingBackend(["y"], model="able", tokens_per_s=10.0)
        peers = await start_mesh(tmp_path, [plain, broken, good])
        try:
            await wait_for(lambda: offered(peers[0], 2))
            for _ in range(3):
                out = await embed(peers[0], ["hello"])
                assert out.peer == peers[2].identity.peer_id_text
            assert broken.embedded  # it was tried, failed, and the request went on
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_with_no_model_able_to_embed_the_answer_says_so(tmp_path):
    async def main():
        peers = await start_mesh(tmp_path, [ScriptedBackend(["a"], model="a"), ScriptedBackend(["b"], model="b")])
        try:
            await wait_for(lambda: sum(1 for m in peers[0].membership_service.view() if m.models) >= 2)
            with pytest.raises(NoAnswer, match="can make these embeddings"):
                await embed(peers[0], ["hello"])
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())
