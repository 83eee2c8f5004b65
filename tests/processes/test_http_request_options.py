"""Stop sequences, logprobs and JSON output (issue 17) through a real mesh-peer process
with the real default model, called with the real `openai` SDK (and Pydantic for
``parse``), with ``mesh ask`` and with the Python client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from support.openai_peer import openai_client, openai_peer
from support.peerproc import run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

COUNT = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
GREEDY = {"model": "mesh", "temperature": 0, "seed": 1, "max_tokens": 40}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with openai_peer(tmp_path_factory.mktemp("options") / "data") as p:
        yield p


client = openai_client


@pytest.fixture(scope="module")
def baseline(peer) -> str:
    """The greedy answer without a stop sequence."""
    text = client(peer).chat.completions.create(messages=COUNT, **GREEDY).choices[0].message.content
    assert len(text) > 12, text
    return text


@pytest.fixture(scope="module")
def stop(baseline) -> str:
    """A stop sequence from the middle of that answer (three characters)."""
    i = len(baseline) // 2
    return baseline[i:i + 3]


def cut(baseline: str, stop: str) -> str:
    return baseline[: baseline.index(stop)]


def test_stop_ends_the_answer_before_the_stop_sequence(peer, baseline, stop):
    c = client(peer).chat.completions.create(messages=COUNT, stop=[stop, "never here"], **GREEDY)
    choice = c.choices[0]
    assert choice.message.content == cut(baseline, stop)
    assert choice.finish_reason == "stop"
    assert c.usage.completion_tokens < 40


def test_streaming_with_stop_never_shows_part_of_the_stop_sequence(peer, baseline, stop):
    pieces, reasons = [], []
    for ch in client(peer).chat.completions.create(messages=COUNT, stop=stop, stream=True, **GREEDY):
        if ch.choices:
            pieces.append(ch.choices[0].delta.content or "")
            reasons.append(ch.choices[0].finish_reason)
    assert "".join(pieces) == cut(baseline, stop)  # a leaked start of the stop sequence would show here
    assert reasons[-1] == "stop"


def test_logprobs_in_openai_shape(peer):
    c = client(peer).chat.completions.create(messages=COUNT, logprobs=True, top_logprobs=3,
                                             **{**GREEDY, "max_tokens": 12})
    choice = c.choices[0]
    content = choice.logprobs.content
    assert len(content) == c.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy: the most likely token was chosen
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    plain = client(peer).chat.completions.create(messages=COUNT, **{**GREEDY, "max_tokens": 4})
    assert plain.choices[0].logprobs is None

    streamed = []
    for ch in client(peer).chat.completions.create(messages=COUNT, logprobs=True, stream=True,
                                                   **{**GREEDY, "max_tokens": 12}):
        if ch.choices and ch.choices[0].logprobs:
            streamed += ch.choices[0].logprobs.content
    assert [(t.token, t.top_logprobs) for t in streamed] == [(t.token, []) for t in content]


class City(BaseModel):
    name: str = Field(max_length=24)
    population: int


def test_json_schema_through_the_sdks_parse(peer):
    parse = getattr(client(peer).chat.completions, "parse", None) or client(peer).beta.chat.completions.parse
    c = parse(model="mesh", messages=[{"role": "user", "content": "Name a big city and its population."}],
              response_format=City, temperature=0, seed=1, max_tokens=80)
    city = c.choices[0].message.parsed
    assert isinstance(city, City) and city.name
    assert json.loads(c.choices[0].message.content) == city.model_dump()


def test_json_object_answers_json(peer):
    c = client(peer).chat.completions.create(
        messages=[{"role": "user", "content": "Give one fruit as a JSON object with a name field."}],
        response_format={"type": "json_object"}, **{**GREEDY, "max_tokens": 120})
    text = c.choices[0].message.content
    assert text.lstrip().startswith("{")
    if c.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def deep(n: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(n):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize("schema, words", [
    (deep(20), "deeper than 16 levels"),
    ({"type": "object", "description": "x" * 70_000}, "the limit is 65536"),
    ({"type": "foo"}, "Unrecognized schema"),
    ({"$ref": "https://example.com/x.json"}, "leaves the schema"),
])
def test_a_bad_schema_is_a_400_naming_it_and_the_peer_keeps_serving(peer, schema, words):
    with pytest.raises(openai.BadRequestError) as e:
        client(peer).chat.completions.create(
            messages=COUNT, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            **GREEDY)
    assert e.value.param == "response_format" and words in e.value.message
    assert client(peer).chat.completions.create(messages=COUNT, **{**GREEDY, "max_tokens": 2}).choices[0]


def test_bad_stop_and_top_logprobs_are_400s(peer):
    r = httpx.post(peer["url"] + "/v1/chat/completions", timeout=30,
                   json={"messages": COUNT, "stop": ["a", "b", "c", "d", "e"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = httpx.post(peer["url"] + "/v1/chat/completions", timeout=30,
                   json={"messages": COUNT, "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_mesh_ask_stop_and_json_schema(peer, baseline, stop, tmp_path):
    r = run_mesh("ask", "--json", "--temperature", "0", "--seed", "1", "--max-tokens", "40", "--stop", "never",
                 f"--stop={stop}", COUNT[0]["content"], data_dir=peer["data"])
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["text"] == cut(baseline, stop) and answer["finish_reason"] == "stop"

    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(City.model_json_schema()))
    r = run_mesh("ask", "--json", "--temperature", "0", "--max-tokens", "80", "--json-schema", str(schema),
                 "Name a big city and its population.", data_dir=peer["data"])
    assert r.returncode == 0, r.stderr
    City.model_validate_json(json.loads(r.stdout)["text"])

    schema.write_text(json.dumps(deep(20)))
    r = run_mesh("ask", "--json-schema", str(schema), "hi", data_dir=peer["data"])
    assert r.returncode != 0 and "deeper than 16 levels" in r.stderr


def test_python_client_options(peer, baseline, stop):
    from mesh.client import Client

    with Client(peer["data"]) as c:
        a = c.ask(COUNT[0]["content"], stop=stop, logprobs=True, top_logprobs=2, temperature=0, seed=1,
                  max_tokens=40)
    assert a.text == cut(baseline, stop)
    assert "".join(t["token"] for t in a.logprobs) == a.text
    assert all(len(t["top_logprobs"]) == 2 for t in a.logprobs)


def test_langchain_with_structured_output(peer):
    """LangChain's ChatOpenAI.with_structured_output (JSON schema mode) against the peer, unchanged."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=peer["url"] + "/v1", api_key="loopback", model="mesh", temperature=0, max_tokens=80,
                     max_retries=0)
    city = llm.with_structured_output(City, method="json_schema").invoke("Name a big city and its population.")
    assert isinstance(city, City) and city.name and city.population >= 0
