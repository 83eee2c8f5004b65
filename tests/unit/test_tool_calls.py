"""Function calling (issue 17), the pure parts: checking OpenAI's tools, tool_choice and
tool messages, the plain-text prompt, the grammar, reading the answer back, and the
OpenAI shapes of a tool call (whole and streamed)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import llama_cpp
import pytest
from test_routing_builders import cand

from mesh.api import ask_args, request_from_ask_args
from mesh.errors import InvalidRequest
from mesh.http.openai_format import chunk, completion_object, tool_call_id, tool_deltas
from mesh.http.openai_schema import ApiError, parse_chat
from mesh.inference.backend import TOOLS, GenerationRequest, Message
from mesh.inference.tools import (
    MAX_TOOLS,
    ToolCall,
    ToolCallParser,
    Tools,
    grammar_text,
    parse_answer,
    prompt_messages,
)
from mesh.routing import Attempt, RouteReason, RouteRequest, RoutingConfig, StepKind, choose_route, next_step

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "time_now", "parameters": {"type": "object", "properties": {"tz": {"$ref": "#/$defs/tz"}},
                                       "$defs": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}
MODELS = ["SmolLM2-135M-Instruct"]


def chat(**body):
    return parse_chat({"messages": ASK, **body}, models=MODELS)


def refused(param: str, **body) -> str:
    with pytest.raises(ApiError) as e:
        chat(**body)
    assert e.value.status == 400 and e.value.param == param, (e.value.param, e.value.message)
    return e.value.message


# -- checks -------------------------------------------------------------------------------


def test_tools_and_choice_are_read():
    assert chat(tools=[WEATHER, CLOCK]).request.tools.choice == "auto"
    assert chat(tools=[WEATHER], tool_choice="required").request.tools.choice == "required"
    named = chat(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "time_now"}})
    assert named.request.tools.forced == "time_now"
    assert chat(tools=[WEATHER], tool_choice="none").request.tools is None
    assert TOOLS in chat(tools=[WEATHER]).request.needs
    assert TOOLS not in chat().request.needs


def test_bad_tools_are_400s_that_name_the_problem():
    msg = refused("tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "'nope'" in msg and "not in tools" in msg
    assert "limit is 64" in refused("tools", tools=[WEATHER] * (MAX_TOOLS + 1))
    bad_name = {"type": "function", "function": {"name": "has space"}}
    assert "tools[1].function.name" in refused("tools", tools=[WEATHER, bad_name])
    assert "given twice" in refused("tools", tools=[WEATHER, WEATHER])
    deep: dict = {"type": "object"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"a": deep}}
    msg = refused("tools", tools=[{"type": "function", "function": {"name": "f", "parameters": deep}}])
    assert "tools[0].function.parameters nests deeper" in msg
    ref = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "https://x/y.json"}}}
    assert "tools[0].function.parameters: $ref" in refused("tools", tools=[ref])
    assert refused("tool_choice", tools=[WEATHER], tool_choice="sometimes")
    assert refused("response_format", tools=[WEATHER], response_format={"type": "json_object"})
    assert refused("functions", functions=[{"name": "f"}])


def test_tool_messages_must_answer_an_earlier_call():
    call = chat(messages=[*ASK, CALLED, RESULT], tools=[WEATHER])
    assert call.request.messages[1] == Message("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),))
    assert call.request.messages[2] == Message("tool", "18 C, sunny", (), "call_1")
    assert TOOLS in chat(messages=[*ASK, CALLED, RESULT]).request.needs  # a history needs a tools engine too
    msg = refused("messages", messages=[*ASK, {**RESULT, "tool_call_id": "call_9"}])
    assert "'call_9' matches no earlier assistant tool call" in msg
    msg = refused("messages", messages=[*ASK, RESULT, CALLED])
    assert "messages[1]" in msg and "matches no earlier" in msg
    assert refused("messages[1].tool_calls[0]", messages=[*ASK, {"role": "assistant", "tool_calls": [{"id": 1}]}])


def test_tools_and_history_survive_the_wire():
    request = chat(messages=[*ASK, CALLED, RESULT], tools=[WEATHER, CLOCK], tool_choice="required").request
    back = request_from_ask_args(json.loads(json.dumps(ask_args(request))))
    assert back == request
    with pytest.raises(InvalidRequest, match="matches no earlier"):
        request_from_ask_args({**ask_args(request), "messages": [*ask_args(request)["messages"][:1],
                                                                 ask_args(request)["messages"][2]]})
    with pytest.raises(InvalidRequest, match="not in tools"):
        request_from_ask_args({**ask_args(request), "tools": {**request.tools.to_wire(), "choice": "nope"}})


# -- the prompt ---------------------------------------------------------------------------


def test_the_prompt_describes_the_functions_and_replays_calls_and_results():
    request = chat(messages=[{"role": "system", "content": "Be brief."}, *ASK, CALLED, RESULT],
                   tools=[WEATHER], tool_choice="required").request
    turns = prompt_messages(request.messages, request.tools, Message)
    assert [m.role for m in turns] == ["system", "user", "assistant", "user"]
    system = turns[0].content
    assert system.startswith("Be brief.\n\nYou can call functions.")
    assert "- get_weather: The weather in a city now." in system and '"required":["city"]' in system
    assert '{"name": "<function name>", "arguments":' in system and "Call one of these functions now." in system
    assert turns[2].content == '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert turns[3].content == "Result of get_weather (call call_1):\n18 C, sunny"
    assert all(not m.tool_calls and m.tool_call_id is None for m in turns)
    auto = prompt_messages(request.messages[1:2], Tools(request.tools.functions, "auto"), Message)
    assert auto[0].role == "system" and "plain text" in auto[0].content


# -- the grammar --------------------------------------------------------------------------


def test_grammars_force_the_call_shape_per_choice():
    both = [WEATHER, CLOCK]
    required = grammar_text(Tools.from_openai(both, "required"))
    auto = grammar_text(Tools.from_openai(both, "auto"))
    named = grammar_text(Tools.from_openai(both, {"type": "function", "function": {"name": "time_now"}}))
    head = '"{\\"name\\": \\"get_weather\\", \\"arguments\\": "'
    assert head in required and head in auto and head not in named
    assert '\\"time_now\\"' in named
    assert "plain-text" in auto and "plain-text" not in required and "plain-text" not in named
    root = next(line for line in required.splitlines() if line.startswith("root ::="))
    assert root == "root ::= tool0-call | tool1-call"
    for g in (required, auto, named):
        assert llama_cpp.llama_sampler_init_grammar(None, g.encode(), b"root")


def test_a_schema_the_converter_refuses_names_its_tool():
    odd = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "wobbly"}}}}}
    with pytest.raises(InvalidRequest, match=r"tools\[0\].function.parameters cannot be compiled"):
        grammar_text(Tools.from_openai([odd], "auto"))


# -- reading the answer -------------------------------------------------------------------

CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"} }'


def test_a_call_is_read_whole_and_in_pieces_alike():
    assert parse_answer(CALL_TEXT) == ("", ToolCall("", "get_weather", '{"city": "Paris"}'))
    assert parse_answer("It is sunny {probably}.") == ("It is sunny {probably}.", None)
    assert parse_answer('{"nam') == ('{"nam', None)  # never the grammar's shape: text
    for step in (1, 3, 7, len(CALL_TEXT)):
        p = ToolCallParser()
        events = []
        for i in range(0, len(CALL_TEXT), step):
            events += p.feed(CALL_TEXT[i:i + step])
        events += p.finish()
        assert events[0] == ("call", "get_weather")
        assert [k for k, _ in events[1:]] == ["args"] * (len(events) - 1)
        assert "".join(s for _, s in events[1:]) == '{"city": "Paris"}'


def test_whole_answer_in_openai_shape():
    call = chat(tools=[WEATHER], tool_choice="required")
    final = {"text": CALL_TEXT, "finish_reason": "stop", "model": "m", "prompt_tokens": 3, "completion_tokens": 9}
    obj = completion_object(call, final, id="chatcmpl-abc", created=1)
    choice = obj["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "call_abc", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    plain = completion_object(call, {**final, "text": "Sunny."}, id="chatcmpl-abc", created=1)["choices"][0]
    assert plain["message"]["content"] == "Sunny." and plain["finish_reason"] == "stop"
    assert "tool_calls" not in plain["message"]
    untooled = completion_object(chat(), final, id="chatcmpl-abc", created=1)["choices"][0]
    assert untooled["message"]["content"] == CALL_TEXT  # no tools offered: text stays text


def test_streamed_deltas_in_the_shape_the_sdk_accumulates():
    call = chat(tools=[WEATHER], tool_choice="required")
    p = ToolCallParser()
    cid = "chatcmpl-xyz"
    parts = []
    for i in range(0, len(CALL_TEXT), 5):
        parts += tool_deltas(p, CALL_TEXT[i:i + 5], call_id=tool_call_id(cid))
    parts += tool_deltas(p, "", call_id=tool_call_id(cid), last=True)
    deltas = [chunk(call, id=cid, created=1, model="m", **part)["choices"][0]["delta"] for part in parts]
    first = deltas[0]["tool_calls"][0]
    assert first == {"index": 0, "id": "call_xyz", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}
    rest = [d["tool_calls"][0] for d in deltas[1:]]
    assert all(set(r) == {"index", "function"} and r["index"] == 0 for r in rest)
    assert "".join(r["function"]["arguments"] for r in rest) == '{"city": "Paris"}'
    assert all("content" not in d for d in deltas)
    text = tool_deltas(ToolCallParser(), "Sunny.", call_id="call_1", last=True)
    assert text == [{"text": "Sunny."}]


def test_generation_request_refuses_a_broken_history_at_every_hop():
    with pytest.raises(InvalidRequest, match="matches no earlier"):
        GenerationRequest(messages=(Message("user", "hi"), Message("tool", "x", (), "call_1"))).validate()


# -- routing ------------------------------------------------------------------------------


def test_tool_requests_go_only_to_engines_that_honour_tools_and_skip_the_cloud():
    older = replace(cand("pa", tps=500), features=frozenset({"stop", "logprobs", "grammar"}))  # no "tools"
    able = replace(cand("pb", tps=10), features=frozenset({"stop", "logprobs", "grammar", TOOLS}))
    kw = dict(reservations={}, affinity=None, breakers=None, now=0.0, rng=random.Random(1),
              cfg=RoutingConfig.for_tests())
    for request in (chat(tools=[WEATHER]).request, chat(messages=[*ASK, CALLED, RESULT]).request):
        route = RouteRequest.for_generation(request)
        assert choose_route(route, [older, able], **kw).chosen.peer_id == "pb"
        no = choose_route(route, [older], **kw)
        assert no.reason is RouteReason.NO_FIT and "tools" in no.detail
        cfg = replace(RoutingConfig.for_tests(), cloud_enabled=True)
        step = next_step([Attempt.of(able, confidence=0.1, reason="best fit")], 0.1, route, [able], cfg=cfg)
        assert step.kind is StepKind.STOP and "cannot honour" in step.reason
    plain = RouteRequest.for_generation(chat(tools=[WEATHER], tool_choice="none").request)
    assert choose_route(plain, [older, able], **kw).chosen.peer_id == "pa"
