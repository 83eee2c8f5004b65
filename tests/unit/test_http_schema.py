"""mesh.http.openai_schema and openai_format: OpenAI bodies in, OpenAI objects out, no peer."""

import pytest

from mesh.errors import BackendBusy, GenerationError, InvalidRequest, NoAnswer
from mesh.gossip.view import MemberView, ModelInfo, PeerMeta
from mesh.http.openai_api import keyless_allowed
from mesh.http.openai_format import (
    chunk,
    completion_object,
    mesh_field,
    mesh_headers,
    model_list,
    usage_chunk,
)
from mesh.http.openai_schema import ApiError, error_for, parse_chat, parse_completion

MODELS = ["SmolLM2-135M-Instruct", "gemma-3-270m"]


def chat(**kw):
    body = {"model": "mesh", "messages": [{"role": "user", "content": "hi"}], **kw}
    return parse_chat(body, models=MODELS)


def refused(body, *, param, status=400, models=MODELS, parse=parse_chat):
    with pytest.raises(ApiError) as e:
        parse(body, models=models)
    assert e.value.status == status, e.value.message
    assert e.value.param == param
    err = e.value.body()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return e.value


# -- requests -----------------------------------------------------------------------------


def test_minimal_chat_gets_mesh_defaults():
    call = chat()
    assert call.kind == "chat" and call.model == "mesh" and not call.stream and not call.include_usage
    assert call.route == {}
    r = call.request
    assert r.messages[0].role == "user" and r.messages[0].content == "hi"
    assert (r.max_tokens, r.temperature, r.top_p, r.seed) == (256, 0.7, 0.95, None)


def test_usual_fields_are_taken():
    call = chat(model="smollm2-135m-instruct", max_tokens=9, temperature=0, top_p=0.5, seed=7, user="u1", n=1,
                stream=True, stream_options={"include_usage": True}, stop=None, logprobs=False,
                presence_penalty=0.1, some_future_field={"x": 1})
    assert call.route["pinned_model"] == "SmolLM2-135M-Instruct"  # case-insensitive, the mesh's spelling
    assert call.model == "smollm2-135m-instruct"
    assert (call.request.max_tokens, call.request.temperature, call.request.top_p, call.request.seed) == (9, 0.0, 0.5, 7)
    assert call.stream and call.include_usage
    assert chat(max_completion_tokens=5, max_tokens=50).request.max_tokens == 5  # the newer name wins


def test_content_parts_and_roles():
    call = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "c", "name": "bob"},
    ])
    assert [(m.role, m.content) for m in call.request.messages] == [
        ("system", "be brief"), ("user", "a\nb"), ("assistant", ""), ("user", "c")]


def test_mesh_extension_becomes_route_keywords():
    call = chat(mesh={"peer": "alpha", "session": "s1", "local_only": True, "no_escalate": True, "threshold": 0.5,
                      "model": "ignored here"})
    assert call.route == {"pinned_peer": "alpha", "session_id": "s1", "local_only": True, "no_escalate": True,
                          "threshold": 0.5}


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10**6}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}},
     "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [""]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "model": 5}, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "mesh": {"threshold": 2}}, "mesh"),
    ({"messages": [{"role": "user", "content": "x"}], "mesh": "fast"}, "mesh"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
])
def test_bad_bodies_name_the_field(body, param):
    refused(body, param=param)


def test_body_must_be_an_object():
    refused([1, 2], param=None)


def test_unknown_model_is_404_model_not_found():
    e = refused({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, param="model", status=404)
    assert e.code == "model_not_found"


def test_completions_prompt_is_one_user_message():
    call = parse_completion({"model": "mesh", "prompt": ["Once upon"], "max_tokens": 4}, models=MODELS)
    assert call.kind == "text" and [(m.role, m.content) for m in call.request.messages] == [("user", "Once upon")]
    refused({"prompt": ["a", "b"]}, param="prompt", parse=parse_completion)
    refused({"prompt": [1, 2, 3]}, param="prompt", parse=parse_completion)
    refused({"prompt": "x", "echo": True}, param="echo", parse=parse_completion)


def test_mesh_errors_map_to_statuses():
    assert error_for(InvalidRequest("x")).status == 400
    busy = error_for(BackendBusy("full"))
    assert busy.status == 429 and busy.headers["Retry-After"] == "1"
    assert error_for(NoAnswer("none")).status == 503 and error_for(NoAnswer("none")).code == "no_answer"
    assert error_for(GenerationError("boom")).status == 502


# -- responses ----------------------------------------------------------------------------

FINAL = {
    "text": "Hello there", "peer": "abcdefghijklmnopqrstuvwxyz", "model": "SmolLM2-135M-Instruct", "confidence": 0.42,
    "min_token_prob": 0.1, "prompt_tokens": 30, "completion_tokens": 3, "finish_reason": "length",
    "tokens_per_s": 50.0, "time_to_first_token_s": 0.1, "generation_s": 0.2, "escalated": True,
    "stopped": "the cloud was tried",
    "path": [{"peer": "abcdefghijklmnopqrstuvwxyz", "model": "SmolLM2-135M-Instruct", "confidence": 0.42,
              "cloud": False, "text": "Hello there"},
             {"peer": "cloud", "model": "big", "confidence": None, "cloud": True, "text": None}],
}


def test_chat_completion_object():
    obj = completion_object(chat(), FINAL, id="chatcmpl-1", created=5, names={FINAL["peer"]: "alpha"})
    assert obj["object"] == "chat.completion" and obj["id"] == "chatcmpl-1" and obj["created"] == 5
    assert obj["model"] == "SmolLM2-135M-Instruct"
    [choice] = obj["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello there", "refusal": None}
    assert choice["finish_reason"] == "length"
    assert obj["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
    assert obj["mesh"]["peer_name"] == "alpha" and obj["mesh"]["confidence"] == 0.42 and obj["mesh"]["escalated"]
    assert all("text" not in rung for rung in obj["mesh"]["path"])  # the answer is not repeated


def test_text_completion_object():
    call = parse_completion({"prompt": "x"}, models=MODELS)
    obj = completion_object(call, FINAL, id="cmpl-1", created=5)
    assert obj["object"] == "text_completion" and obj["choices"][0]["text"] == "Hello there"


def test_headers_say_who_answered():
    h = mesh_headers(FINAL)
    assert h["X-Mesh-Peer"] == FINAL["peer"] and h["X-Mesh-Model"] == "SmolLM2-135M-Instruct"
    assert h["X-Mesh-Confidence"] == "0.4200" and h["X-Mesh-Escalated"] == "true"
    assert h["X-Mesh-Route-Path"] == "abcdefghijkl/SmolLM2-135M-Instruct@0.420,cloud/big@-"
    assert mesh_headers({**FINAL, "model": "evil\r\nSet-Cookie: x"})["X-Mesh-Model"] == "evil??Set-Cookie: x"


def test_stream_chunks():
    call = chat(stream=True, stream_options={"include_usage": True})
    first = chunk(call, id="c", created=1, model="m", first=True)
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and first["usage"] is None
    mid = chunk(call, id="c", created=1, model="m", text="Hel")
    assert mid["choices"][0]["delta"] == {"content": "Hel"} and mid["choices"][0]["finish_reason"] is None
    last = chunk(call, id="c", created=1, model="m", finish_reason="stop", mesh=mesh_field(FINAL))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert last["mesh"]["model"] == "SmolLM2-135M-Instruct"
    u = usage_chunk(call, FINAL, id="c", created=1)
    assert u["choices"] == [] and u["usage"]["total_tokens"] == 33
    plain = chunk(chat(stream=True), id="c", created=1, model="m", text="x")
    assert "usage" not in plain
    text = chunk(parse_completion({"prompt": "x", "stream": True}, models=MODELS), id="c", created=1, model="m",
                 text="x")
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "x"


def test_model_list_has_mesh_every_live_model_and_the_cloud():
    def member(peer_id, name, state, *models):
        meta = PeerMeta(models=tuple(ModelInfo(name=m, parameters=1, context_length=c, tokens_per_s=1.0)
                                     for m, c in models))
        return MemberView(peer_id=peer_id, name=name, state=state, meta=meta)

    view = [
        member("a", "alpha", "alive", ("m1", 512)),
        member("b", "beta", "suspect", ("m1", 2048), ("m2", 1)),
        member("c", "gone", "dead", ("m3", 1)),
        MemberView(peer_id="d", name="odd", state="alive", meta=None, meta_problem="bad models"),
    ]
    out = model_list(view, own=("m1", 512), cloud="gpt-x")
    ids = [m["id"] for m in out["data"]]
    assert out["object"] == "list" and ids == ["mesh", "gpt-x", "m1", "m2"]
    m1 = next(m for m in out["data"] if m["id"] == "m1")
    assert m1["mesh"] == {"peers": ["alpha", "beta"], "context_length": 2048, "cloud": False}
    assert next(m for m in out["data"] if m["id"] == "gpt-x")["owned_by"] == "cloud"


# -- who may go without a key ------------------------------------------------------------


@pytest.mark.parametrize("mode,bind,remote,ok", [
    ("auto", "127.0.0.1", "127.0.0.1", True),
    ("auto", "::1", "::1", True),
    ("auto", "0.0.0.0", "127.0.0.1", False),  # never by default on a network bind
    ("auto", "0.0.0.0", "10.0.0.5", False),
    ("yes", "0.0.0.0", "127.0.0.1", True),
    ("yes", "0.0.0.0", "::ffff:127.0.0.1", True),
    ("yes", "0.0.0.0", "10.0.0.5", False),
    ("no", "127.0.0.1", "127.0.0.1", False),
    ("auto", "127.0.0.1", None, False),
])
def test_keyless_rule(mode, bind, remote, ok):
    assert keyless_allowed(mode, bind_host=bind, remote=remote) is ok
