"""POST /v1/embeddings (issue 17) through a real mesh-peer process with the real default
model: the real `openai` SDK (float and base64, which the SDK decodes), LangChain's
``OpenAIEmbeddings``, ``mesh embed`` and the Python client; bad input is a 400 naming
the problem, and the peer goes on serving."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from mesh.client import Client
from support.openai_peer import openai_client, openai_peer
from support.peerproc import run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

DIMS = 576  # SmolLM2-135M's embedding length (llama.embedding_length in its GGUF)
CAT = "The cat sits on the mat."
KITTEN = "A kitten is sitting on a rug."
REVENUE = "Quarterly revenue rose by four percent."


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with openai_peer(tmp_path_factory.mktemp("embeddings") / "data") as p:
        yield p


client = openai_client


def cos(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_float_embeddings_are_unit_vectors_of_the_models_size_and_mean_something(peer):
    r = client(peer).embeddings.create(model="mesh", input=[CAT, KITTEN, REVENUE, CAT], encoding_format="float")
    assert r.object == "list" and r.model == "SmolLM2-135M-Instruct"
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    vectors = [d.embedding for d in r.data]
    assert all(len(v) == DIMS for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    cat, kitten, revenue, cat_again = vectors
    assert cos(cat, kitten) > cos(cat, revenue) + 0.05
    assert cos(cat, kitten) > cos(kitten, revenue) + 0.05
    assert cat_again == pytest.approx(cat, abs=1e-6)  # the same text, elsewhere in one batch: float32 rounding
    again = [client(peer).embeddings.create(model="mesh", input=CAT, encoding_format="float").data[0].embedding
             for _ in range(2)]
    assert again[0] == again[1]  # the same text alone gives exactly the same vector
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens


def test_base64_decoded_by_the_sdk_equals_the_float_answer(peer):
    c = client(peer)
    as_float = c.embeddings.create(model="SmolLM2-135M-Instruct", input=KITTEN, encoding_format="float")
    # without encoding_format the SDK asks for base64 and decodes it itself
    as_b64 = c.embeddings.create(model="SmolLM2-135M-Instruct", input=KITTEN)
    assert as_b64.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-7)
    raw = httpx.post(peer["url"] + "/v1/embeddings", json={"input": KITTEN, "encoding_format": "base64"},
                     timeout=60).json()
    assert isinstance(raw["data"][0]["embedding"], str)  # base64 on the wire
    assert raw["model"] == "SmolLM2-135M-Instruct"


def test_bad_input_is_a_400_naming_the_problem_and_the_peer_keeps_serving(peer):
    c = client(peer)
    for kw, words in (({"input": ["word"] * 10_000}, "2048"),
                      ({"input": []}, "empty"),
                      ({"input": ""}, "empty"),
                      ({"input": CAT, "dimensions": 64}, "576"),
                      ({"input": [[1, 2, 3]]}, "token arrays"),
                      ({"input": "word " * 2000}, "at most")):  # over the embedding context
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model="mesh", encoding_format="float", **kw)
        assert words in e.value.message, e.value.message
    ok = c.embeddings.create(model="mesh", input=CAT, dimensions=DIMS, encoding_format="float")
    assert len(ok.data[0].embedding) == DIMS
    chat = c.chat.completions.create(model="mesh", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert chat.choices[0].message.content is not None


def test_langchain_openai_embeddings(peer):
    emb = OpenAIEmbeddings(model="mesh", base_url=peer["url"] + "/v1", api_key="x",
                           check_embedding_ctx_length=False, max_retries=0)
    docs = emb.embed_documents([CAT, REVENUE])
    query = emb.embed_query(KITTEN)
    assert len(docs) == 2 and all(len(v) == DIMS for v in docs + [query])
    assert cos(query, docs[0]) > cos(query, docs[1])


def test_python_client_and_mesh_embed(peer):
    with Client(peer["data"]) as c:
        vectors = c.embed([CAT, KITTEN])
    assert len(vectors) == 2 and len(vectors[0]) == DIMS
    r = run_mesh("embed", CAT, KITTEN, data_dir=peer["data"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "2 vector(s) of 576 dimensions" in lines[0]
    rows = [ln.split() for ln in lines[2:]]
    assert [row[1:3] for row in rows] == [["576", "1.0000"], ["576", "1.0000"]]
    assert float(rows[0][3]) == pytest.approx(vectors[0][0], abs=1e-4)  # the first value, as the client has it
    r = run_mesh("embed", CAT, "--json", data_dir=peer["data"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"] == "SmolLM2-135M-Instruct"
    assert doc["embeddings"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)
    r = run_mesh("embed", "x", "--model", "no-such-model", data_dir=peer["data"])
    assert r.returncode != 0 and "no-such-model" in r.stderr
