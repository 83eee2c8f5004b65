"""Tools and tool_choice (issue 17) through a real mesh-peer process with the real default
model, called with the real `openai` SDK and LangChain's ``ChatOpenAI.bind_tools``: a
call, its result sent back in a ``tool`` message, an answer; a streamed call the SDK
accumulates; bad input refused with a 400 while the peer keeps serving."""

from __future__ import annotations

import json

import openai
import pytest

from support.openai_peer import openai_client, openai_peer

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a time zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
                   "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
GREEDY = {"model": "mesh", "temperature": 0, "seed": 1, "max_tokens": 60}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    with openai_peer(tmp_path_factory.mktemp("tools") / "data") as p:
        yield p


client = openai_client


def test_a_named_tool_call_round_trip(peer):
    c = client(peer).chat.completions.create(messages=ASK, tools=[WEATHER, CLOCK], tool_choice=NAMED, **GREEDY)
    choice = c.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)

    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})}]
    answer = client(peer).chat.completions.create(messages=history, tools=[WEATHER, CLOCK], tool_choice="none",
                                                  **GREEDY)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content.strip()
    plain = client(peer).chat.completions.create(messages=ASK, **{**GREEDY, "max_tokens": 1})
    assert c.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the functions were described
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the call and its result were in the prompt


def test_required_picks_one_of_the_tools(peer):
    c = client(peer).chat.completions.create(messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", **GREEDY)
    (call,) = c.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    if call.function.name == "get_time":
        assert args["zone"] in ("UTC", "CET", "PST")
    else:
        assert call.function.name == "get_weather" and isinstance(args["city"], str)


def test_a_streamed_call_accumulates_in_the_sdk(peer):
    whole = client(peer).chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice=NAMED, **GREEDY)
    stream = getattr(client(peer).chat.completions, "stream", None) or client(peer).beta.chat.completions.stream
    with stream(messages=ASK, tools=[WEATHER], tool_choice=NAMED, **GREEDY) as s:
        events = [e.type for e in s]
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert call.function.arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert events.count("tool_calls.function.arguments.delta") >= 2  # arguments came in pieces

    raw = list(client(peer).chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice=NAMED, stream=True,
                                                    **GREEDY))
    deltas = [ch.choices[0].delta.tool_calls[0] for ch in raw if ch.choices and ch.choices[0].delta.tool_calls]
    assert deltas[0].id == "call_" + raw[0].id.split("-", 1)[-1]
    assert deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas)
    assert raw[-1].choices[0].finish_reason == "tool_calls"


def test_auto_answers_text_or_a_call(peer):
    c = client(peer).chat.completions.create(messages=[{"role": "user", "content": "Say hello."}], tools=[WEATHER],
                                             **GREEDY)
    m = c.choices[0].message
    if m.tool_calls:
        assert c.choices[0].finish_reason == "tool_calls" and m.content is None
        json.loads(m.tool_calls[0].function.arguments)
    else:
        assert m.content and not m.content.startswith("{")


@pytest.mark.parametrize("body, param, words", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}},
     "tool_choice", "'launch_rocket'"),
    ({"tools": [WEATHER] * 65}, "tools", "the limit is 64"),
    ({"tools": [WEATHER], "messages": [*ASK, {"role": "tool", "tool_call_id": "call_nobody", "content": "18 C"}]},
     "messages", "'call_nobody' matches no earlier assistant tool call"),
])
def test_bad_tool_input_is_a_400_and_the_peer_keeps_serving(peer, body, param, words):
    with pytest.raises(openai.BadRequestError) as e:
        client(peer).chat.completions.create(**{"messages": ASK, **GREEDY, **body})
    assert e.value.param == param and words in e.value.message, e.value.message
    ok = client(peer).chat.completions.create(messages=ASK, **{**GREEDY, "max_tokens": 2})
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_langchain_bind_tools(peer):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"18 C and sunny in {city}"

    llm = ChatOpenAI(base_url=peer["url"] + "/v1", api_key="loopback", model="mesh", temperature=0, seed=1,
                     max_tokens=60, max_retries=0, timeout=120)
    question = HumanMessage("What is the weather like in Paris right now?")
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke([question, ai, result])
    assert isinstance(answer.content, str) and answer.content.strip() and not answer.tool_calls
