"""Request options (issue 17): stop sequences, logprobs, JSON output under a grammar.

The pure parts: the stop-sequence holdback, logprob entries and their OpenAI shape, the
schema checks and bounds, the wire form of a request, the HTTP body and answer shapes,
and routing only to peers whose engine honours what a request uses."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace

import numpy as np
import pytest
from test_routing_builders import cand

from mesh.api import ask_args, request_from_ask_args
from mesh.errors import GenerationError, InvalidRequest
from mesh.http.openai_format import chunk, completion_object
from mesh.http.openai_schema import ApiError, parse_chat, parse_completion
from mesh.inference.backend import ENGINE_FEATURES, FinalStats, GenerationRequest, TextChunk
from mesh.inference.coalesce import coalesce
from mesh.inference.confidence import LogitsRecorder
from mesh.inference.logprobs import FLOOR, LogprobAligner, entries_from_wire, entry, openai_content
from mesh.inference.output_format import MAX_DEPTH, OutputFormat, grammar_text, nesting
from mesh.inference.stops import StopScanner, check_stop
from mesh.routing import Attempt, RouteReason, RouteRequest, RoutingConfig, StepKind, choose_route, next_step

# -- stop sequences ----------------------------------------------------------------------


def scan(stops, pieces):
    s = StopScanner(stops)
    out, stopped = [], False
    for p in pieces:
        text, stopped = s.feed(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(s.flush())
    return out, stopped


def test_text_that_could_begin_a_stop_sequence_is_held_until_it_cannot():
    out, stopped = scan(["\nUser:"], ["Hi", " there\nUs", "ually", " yes"])
    assert out == ["Hi", " there", "\nUsually", " yes", ""] and not stopped


def test_a_stop_sequence_split_across_tokens_ends_the_answer_before_it():
    out, stopped = scan(["END"], ["one E", "N", "D two"])
    assert "".join(out) == "one " and stopped
    assert out[0] == "one "  # "E" never left the scanner


def test_the_earliest_of_several_stop_sequences_wins_and_nothing_after_it_leaves():
    out, stopped = scan(["world", "lo"], ["hello world"])
    assert out == ["hel"] and stopped
    s = StopScanner(["x"])
    s.feed("ax")
    assert s.feed("more") == ("", True) and s.flush() == ""


def test_released_counts_characters_let_out():
    s = StopScanner(["abc"])
    s.feed("xxab")
    assert s.released == 2
    s.feed("d")
    assert s.released == 5


@pytest.mark.parametrize("bad", [5, ["a", 1], [""], ["a"] * 5, ["x" * 257]])
def test_stop_values_are_bounded(bad):
    with pytest.raises(InvalidRequest):
        check_stop(bad)


def test_stop_may_be_a_string_or_a_list():
    assert check_stop("a") == ("a",) and check_stop(["a", "b", "a"]) == ("a", "b") and check_stop(None) == ()


# -- logprobs ----------------------------------------------------------------------------


def test_top_alternatives_come_from_the_last_row_most_likely_first():
    rec = LogitsRecorder()
    row = np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    rec(np.array([]), row)
    top = rec.top(2)
    assert [t for t, _ in top] == [1, 3]
    lse = np.log(np.exp(row.astype(np.float64)).sum())
    assert top[0][1] == pytest.approx(3.0 - lse) and rec.logprob(1) == pytest.approx(top[0][1])
    assert rec.top(0) == [] and len(rec.top(99)) == 4


def test_entries_take_openai_shape_with_bytes_and_a_finite_floor():
    e = entry("é".encode(), -0.5, [("é".encode(), -0.5), (b"e", float("-inf"))])
    [c] = openai_content(entries_from_wire([e]))
    assert c == {"token": "é", "logprob": -0.5, "bytes": [195, 169], "top_logprobs": [
        {"token": "é", "logprob": -0.5, "bytes": [195, 169]}, {"token": "e", "logprob": FLOOR, "bytes": [101]}]}
    json.dumps(c, allow_nan=False)


@pytest.mark.parametrize("bad", [
    "x", [[b"a"]], [["a", -1.0, []]], [[b"a", 0.5, []]], [[b"a", -1.0, [[b"b", -1.0]] * 21]],
    [[b"a" * 300, -1.0, []]], [[b"a", True, []]],
])
def test_entries_from_another_peer_are_checked(bad):
    with pytest.raises(GenerationError):
        entries_from_wire(bad)


def test_an_entry_leaves_with_the_first_text_of_its_token():
    a = LogprobAligner()
    a.add(0, "t0")
    a.add(2, "t1")
    a.add(2, "t2")  # a token whose bytes end a character later: it begins where the next one does
    assert a.release(2) == ["t0"]
    assert a.release(3) == ["t1", "t2"]
    a.add(5, "t3")
    assert a.release(5) == [] and a.rest() == ["t3"]


FINAL = FinalStats("m", 1, 3, 1.0, 1.0, "stop", 0.0, 0.0, 0.0)


def test_coalescing_keeps_logprobs_with_their_text():
    async def run():
        async def stream():
            yield TextChunk("a", ("e1",))
            yield TextChunk("", ("e2",))
            yield TextChunk("b", ("e3",))
            yield FINAL

        return [c async for c in coalesce(stream(), window_s=10.0) if isinstance(c, TextChunk)]

    chunks = asyncio.run(run())
    assert "".join(c.text for c in chunks) == "ab"
    assert [e for c in chunks for e in c.logprobs] == ["e1", "e2", "e3"]


# -- JSON output -------------------------------------------------------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_a_schema_compiles_to_a_grammar_llama_cpp_accepts():
    text = grammar_text(OutputFormat.for_schema(PERSON))
    assert "root ::=" in text and nesting(text) >= 1
    assert "root" in grammar_text(OutputFormat("json_object"))


@pytest.mark.parametrize("schema, words", [
    (nested(MAX_DEPTH), f"deeper than {MAX_DEPTH} levels"),
    ({"type": "object", "description": "x" * 70_000}, "the limit is 65536"),
    ({"$ref": "https://example.com/s.json"}, "$ref 'https://example.com/s.json'"),
    ({"type": "string", "maxLength": 10**12}, "maxLength at / must be an integer in 0..1024"),
    ({"type": "string", "pattern": "^(a{99}){99}{99}$"}, "pattern at / repeats too much"),
    ({"type": "foo"}, "Unrecognized schema: {'type': 'foo'}"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(40)}},
     "compiles to a grammar of"),
])
def test_a_schema_that_cannot_be_compiled_or_is_too_big_names_the_construct(schema, words):
    with pytest.raises(InvalidRequest) as e:
        grammar_text(OutputFormat.for_schema(schema))
    assert words in str(e.value)


def test_depth_at_the_limit_compiles():
    grammar_text(OutputFormat.for_schema(nested(MAX_DEPTH - 2)))


def test_openai_response_format_shapes():
    assert OutputFormat.from_openai(None) is None and OutputFormat.from_openai({"type": "text"}) is None
    assert OutputFormat.from_openai({"type": "json_object"}).kind == "json_object"
    fmt = OutputFormat.from_openai({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON,
                                                                            "strict": True}})
    assert json.loads(fmt.schema) == PERSON and list(json.loads(fmt.schema)["properties"]) == ["name", "age"]
    for bad in ({"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
                {"type": "xml"}, "json"):
        with pytest.raises(InvalidRequest):
            OutputFormat.from_openai(bad)


# -- the request on the wire and in routing ---------------------------------------------


def full_request() -> GenerationRequest:
    return GenerationRequest.from_prompt("hi", stop=("\n", "END"), logprobs=True, top_logprobs=3,
                                         format=OutputFormat.for_schema(PERSON)).validate()


def test_options_survive_the_wire_and_say_what_they_need():
    req = full_request()
    back = request_from_ask_args(ask_args(req))
    assert back == req and back.needs == frozenset({"stop", "logprobs", "grammar"})  # tools: test_tool_calls.py
    assert GenerationRequest.from_prompt("hi").needs == frozenset()
    assert "stop" not in ask_args(GenerationRequest.from_prompt("hi"))  # plain requests look as before


@pytest.mark.parametrize("change", [
    {"stop": ["a"] * 5}, {"top_logprobs": 21}, {"logprobs": "yes"}, {"format": {"type": "json_schema"}},
    {"format": {"type": "json_schema", "schema": json.dumps(nested(40))}},
])
def test_bad_options_from_another_peer_are_invalid_requests(change):
    with pytest.raises(InvalidRequest):
        request_from_ask_args({**ask_args(full_request()), **change})


def test_only_peers_whose_engine_honours_the_options_are_chosen():
    plain = cand("pa", tps=500)  # faster, but says nothing about options
    able = replace(cand("pb", tps=10), features=frozenset(ENGINE_FEATURES))
    route = RouteRequest.for_generation(full_request())
    kw = dict(reservations={}, affinity=None, breakers=None, now=0.0, rng=random.Random(1),
              cfg=RoutingConfig.for_tests())
    assert choose_route(route, [plain, able], **kw).chosen.peer_id == "pb"
    no = choose_route(route, [plain], **kw)
    assert no.reason is RouteReason.NO_FIT and "honour" in no.detail and "grammar, logprobs, stop" in no.detail
    plain_route = RouteRequest.for_generation(GenerationRequest.from_prompt("hi"))
    assert choose_route(plain_route, [plain, able], **kw).chosen.peer_id == "pa"


def test_the_cloud_rung_is_skipped_for_options_it_cannot_honour():
    cfg = replace(RoutingConfig.for_tests(), cloud_enabled=True)
    able = replace(cand("pb"), features=frozenset(ENGINE_FEATURES))
    route = RouteRequest.for_generation(full_request())
    step = next_step([Attempt.of(able, confidence=0.1, reason="best fit")], 0.1, route, [able], cfg=cfg)
    assert step.kind is StepKind.STOP and "cannot honour" in step.reason and step.keep == 0
    cloud_can = replace(cfg, cloud_features=frozenset(ENGINE_FEATURES))
    assert next_step([Attempt.of(able, confidence=0.1, reason="x")], 0.1, route, [able], cfg=cloud_can).kind \
        is StepKind.CLOUD


# -- the HTTP API ------------------------------------------------------------------------

MSGS = [{"role": "user", "content": "hi"}]


def test_chat_bodies_with_options_become_requests():
    call = parse_chat({"messages": MSGS, "stop": "\n", "logprobs": True, "top_logprobs": 2,
                       "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
                      models=[])
    r = call.request
    assert r.stop == ("\n",) and r.logprobs and r.top_logprobs == 2 and r.format.kind == "json_schema"
    assert parse_chat({"messages": MSGS, "stop": [], "response_format": {"type": "text"}}, models=[]).request.needs \
        == frozenset()
    assert parse_completion({"prompt": "hi", "stop": ["x"]}, models=[]).request.stop == ("x",)


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": nested(20)}}},
     "response_format", "deeper than 16"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": {"type": "foo"}}}},
     "response_format", "'type': 'foo'"),
    ({"stop": ["a"] * 5}, "stop", "at most 4"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs", "0..20"),
])
def test_bad_options_are_400s_naming_the_field(body, param, words):
    with pytest.raises(ApiError) as e:
        parse_chat({"messages": MSGS, **body}, models=[])
    assert e.value.status == 400 and e.value.param == param and words in e.value.message


def test_legacy_completions_logprobs_are_refused():
    with pytest.raises(ApiError) as e:
        parse_completion({"prompt": "hi", "logprobs": 2}, models=[])
    assert e.value.param == "logprobs"


def test_answers_and_chunks_carry_logprobs_only_when_asked():
    asked = parse_chat({"messages": MSGS, "logprobs": True, "top_logprobs": 1}, models=[])
    plain = parse_chat({"messages": MSGS}, models=[])
    e = entry(b"Hi", -0.25, [(b"Hi", -0.25)])
    final = {"text": "Hi", "model": "m", "logprobs": [e], "finish_reason": "stop"}
    lp = completion_object(asked, final, id="c", created=1)["choices"][0]["logprobs"]
    assert lp == {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                               "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}],
                  "refusal": None}
    assert completion_object(plain, final, id="c", created=1)["choices"][0]["logprobs"] is None
    c = chunk(asked, id="c", created=1, model="m", text="Hi", logprobs=[e])
    assert c["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    assert chunk(asked, id="c", created=1, model="m", text="Hi")["choices"][0]["logprobs"] is None


def test_an_openai_backend_refuses_options_it_would_ignore():
    from mesh.inference.openai_backend import OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    assert backend.capabilities.features == ()  # so routing never sends it such a request

    async def first():
        return await backend.stream(GenerationRequest.from_prompt("hi", stop=("x",))).__anext__()

    with pytest.raises(InvalidRequest, match="does not honour stop"):
        asyncio.run(first())
