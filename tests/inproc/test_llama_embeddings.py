"""Embeddings with the real default model, without a mesh-peer process (issue 17):
``Client.embedded()`` (a peer in this process), the in-process ``LlamaBackend``, and the
``Embedder`` itself: unit vectors of the model's size, similar texts closer than
unrelated ones, an input over the embedding context refused (and the backend goes on
serving), the context opened on the first embedding and closed when idle."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from mesh.client import Client
from mesh.errors import InvalidRequest
from mesh.inference.cpu_variant import ensure_cpu_variant
from mesh.inference.embedder import MAX_TOKENS, Embedder
from mesh.inference.embedding import EmbeddingRequest
from mesh.inference.llama import LlamaBackend
from mesh.inference.models import default_model_path

pytestmark = pytest.mark.model

DIMS = 576  # SmolLM2-135M's embedding length


def test_client_embedded_embeds(tmp_path):
    with Client.embedded(tmp_path / "data") as client:
        cat, kitten, revenue = (np.array(v) for v in client.embed(
            ["The cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue rose by four percent."]))
        answer = client.ask("Say hi.", max_tokens=4)
    assert len(cat) == DIMS
    assert all(math.isclose(float(v @ v), 1.0, rel_tol=1e-4) for v in (cat, kitten, revenue))
    assert cat @ kitten > cat @ revenue and cat @ kitten > kitten @ revenue
    assert answer.text is not None  # generation goes on beside the embedding context


def test_an_input_over_the_embedding_context_is_refused_and_the_backend_serves_on():
    async def main():
        backend = await LlamaBackend.create(n_ctx=1024, warmup_tokens=0)
        try:
            with pytest.raises(InvalidRequest, match=f"at most {MAX_TOKENS} tokens"):
                await backend.embed(EmbeddingRequest(("word " * (2 * MAX_TOKENS),)))
            out = await backend.embed(EmbeddingRequest(("hello", "world")))
            assert len(out.vectors) == 2 and out.dimensions == DIMS and out.prompt_tokens > 0
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_the_embedding_context_opens_on_first_use_and_closes_when_idle():
    ensure_cpu_variant()
    now = [0.0]
    embedder = Embedder(default_model_path(), metadata={"general.architecture": "llama"}, n_threads=1, idle_s=60,
                        clock=lambda: now[0])
    got: list = []
    try:
        assert not embedder.is_open and embedder.pooling_name == "mean"
        assert embedder.embed(["hello"], on_vectors=lambda i, vs: got.extend(vs)) > 0
        assert embedder.is_open and len(got) == 1
        now[0] = 59.0
        assert not embedder.close_if_idle() and embedder.is_open
        now[0] = 60.0
        assert embedder.close_if_idle() and not embedder.is_open
        embedder.embed(["hello"], on_vectors=lambda i, vs: got.extend(vs))
        assert embedder.opened == 2 and got[0] == got[1]  # reopened, and the same vector
    finally:
        embedder.close()
