"""POST /v1/embeddings, the pure parts (issue 17): the body's checks (each a 400 or 404
naming the problem), OpenAI's response shape, the base64 encoding, the vector wire
format and the pooling a GGUF asks for."""

from __future__ import annotations

import base64
import math

import llama_cpp
import numpy as np
import pytest

from mesh.errors import InvalidRequest
from mesh.http.openai_embeddings import (
    check_dimensions,
    embedding_response,
    parse_embeddings,
)
from mesh.http.openai_schema import ApiError
from mesh.inference.embedder import pooling_of
from mesh.inference.embedding import (
    MAX_INPUTS,
    MAX_TOTAL_CHARS,
    EmbeddingRequest,
    Embeddings,
    check_vectors,
    chunked,
    normalized,
    pack_vector,
    unpack_vector,
)

MODELS = ["SmolLM2-135M-Instruct"]


def refused(body, status=400) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse_embeddings(body, models=MODELS)
    assert e.value.status == status, e.value.message
    return e.value


def out(vectors, model="m") -> Embeddings:
    return Embeddings(tuple(pack_vector(v) for v in vectors), model=model, prompt_tokens=7, peer="p")


def test_a_string_or_a_list_of_strings():
    assert parse_embeddings({"input": "hello"}, models=MODELS).request.texts == ("hello",)
    call = parse_embeddings({"input": ["a", "b"], "model": "smollm2-135m-instruct"}, models=MODELS)
    assert call.request.texts == ("a", "b")
    assert call.pinned_model == "SmolLM2-135M-Instruct"  # named as the mesh names it
    assert call.encoding_format == "float" and call.dimensions is None
    assert parse_embeddings({"input": "x", "model": "mesh"}, models=MODELS).pinned_model is None


def test_ten_thousand_inputs_are_a_400_that_names_the_limit():
    e = refused({"input": ["x"] * 10_000})
    assert str(MAX_INPUTS) in e.message and "10000" in e.message
    assert e.param == "input"


def test_too_much_text_in_all_is_a_400_that_names_the_limit():
    e = refused({"input": ["y" * 1000] * (MAX_TOTAL_CHARS // 1000 + 1)})
    assert str(MAX_TOTAL_CHARS) in e.message


@pytest.mark.parametrize("value", ["", [], [""], ["ok", ""]])
def test_empty_input_is_a_400(value):
    assert "empty" in refused({"input": value}).message


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]]])
def test_token_arrays_are_a_clear_400(value):
    assert "token arrays" in refused({"input": value}).message


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": 3}, "input"),
    ({"input": ["a", 3]}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "dimensions": "64"}, "dimensions"),
    ({"input": "a", "mesh": {"threshold": 3}}, "mesh"),
])
def test_bad_fields_are_a_400_naming_the_field(body, param):
    assert refused(body).param == param


def test_an_unknown_model_is_a_404():
    assert refused({"input": "a", "model": "gpt-4"}, status=404).code == "model_not_found"


def test_dimensions_other_than_the_models_are_refused():
    call = parse_embeddings({"input": "a", "dimensions": 3}, models=MODELS)
    check_dimensions(call, out([[1.0, 0.0, 0.0]]))  # equal: fine
    call = parse_embeddings({"input": "a", "dimensions": 2}, models=MODELS)
    with pytest.raises(ApiError) as e:
        check_dimensions(call, out([[1.0, 0.0, 0.0]]))
    assert e.value.status == 400 and e.value.param == "dimensions" and "3-dimensional" in e.value.message


def test_float_response_in_openai_shape():
    v = normalized([3.0, 4.0])
    body = embedding_response(parse_embeddings({"input": ["a", "b"]}, models=MODELS), out([v, [0.0, 1.0]]))
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    assert body["data"][0]["embedding"] == pytest.approx([0.6, 0.8])


def test_base64_is_little_endian_float32_as_openai_decodes_it():
    v = [0.6, -0.8, 0.0, 1e-3]
    body = embedding_response(parse_embeddings({"input": "a", "encoding_format": "base64"}, models=MODELS), out([v]))
    s = body["data"][0]["embedding"]
    assert isinstance(s, str)
    raw = base64.b64decode(s)
    assert raw[:4] == bytes.fromhex("9a99193f")  # 0.6 as float32, little-endian
    # what the openai SDK does with it
    assert np.frombuffer(raw, dtype="float32").tolist() == pytest.approx(v, rel=1e-6)


def test_vectors_round_trip_and_are_checked():
    v = normalized([1.0, 2.0, 2.0])
    assert math.isclose(math.fsum(x * x for x in v), 1.0)
    assert unpack_vector(pack_vector(v)) == pytest.approx(v, rel=1e-6)
    assert normalized([0.0, 0.0]) == [0.0, 0.0]
    assert check_vectors([pack_vector(v)] * 2, count=2) == (pack_vector(v),) * 2
    for bad, count in (([pack_vector(v)], 2), ([pack_vector(v), pack_vector([1.0])], 2), ([b"abc"], 1),
                       (["text"], 1), ([b""], 1)):
        with pytest.raises(ValueError):
            check_vectors(bad, count=count)


def test_chunks_stay_under_the_frame_budget_and_keep_order():
    vectors = [pack_vector([float(i)] * 100) for i in range(10)]  # 400 bytes each
    groups = list(chunked(vectors, max_bytes=1000))
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2]
    assert [v for g in groups for v in g] == vectors
    assert list(chunked([b"x" * 4000], max_bytes=1000)) == [[b"x" * 4000]]  # one vector over: alone


def test_request_from_the_wire_is_validated():
    assert EmbeddingRequest.from_wire({"input": ["a"], "model": "m"}) == EmbeddingRequest(("a",), "m")
    for args in ({"input": "a"}, {"input": []}, {"input": ["a"] * (MAX_INPUTS + 1)}, {"input": ["a"], "model": ""},
                 [1]):
        with pytest.raises(InvalidRequest):
            EmbeddingRequest.from_wire(args)


def test_pooling_is_the_models_own_or_mean():
    assert pooling_of({"general.architecture": "llama"}) == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    assert pooling_of({"general.architecture": "bert", "bert.pooling_type": "2"}) == llama_cpp.LLAMA_POOLING_TYPE_CLS
    assert pooling_of({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}) == llama_cpp.LLAMA_POOLING_TYPE_LAST
    assert pooling_of({"general.architecture": "bert", "bert.pooling_type": "0"}) == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    assert pooling_of({"general.architecture": "x", "x.pooling_type": "junk"}) == llama_cpp.LLAMA_POOLING_TYPE_MEAN
