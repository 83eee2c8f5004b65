"""The OpenAI-compatible API of a real mesh-peer process with the real default model,
called with the real `openai` SDK: answers, streams, models, keys (made and revoked with
the `mesh keys` CLI while the peer runs), bad requests, size and rate limits."""

import json
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

MODEL = "SmolLM2-135M-Instruct"
HI = [{"role": "user", "content": "Say hello."}]


def make_key(data_dir, name: str) -> tuple[str, str]:
    r = run_mesh("keys", "create", name, data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    key_id = r.stderr.split()[1]
    return token, key_id


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """One peer that asks every caller for a key, even on loopback."""
    data = tmp_path_factory.mktemp("openai") / "data"
    token, _ = make_key(data, "tests")  # made before the peer starts
    p = PeerProcess(data, "--name", "alpha", "--ctx", "1024", "--threads", "1", "--http-open-loopback", "no")
    try:
        info = p.wait_ready()
        yield {"url": info["http"], "key": token, "data": data, "peer_id": info["peer_id"], "proc": p}
    finally:
        p.stop()


def client(peer, key=None, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=peer["url"] + "/v1", api_key=key or peer["key"], max_retries=0, timeout=60, **kw)


def test_chat_completion_with_routing_facts(peer):
    raw = client(peer).chat.completions.with_raw_response.create(model="mesh", messages=HI, max_tokens=8,
                                                                   temperature=0, seed=1)
    assert raw.headers["X-Mesh-Peer"] == peer["peer_id"]
    assert raw.headers["X-Mesh-Model"] == MODEL
    assert 0 <= float(raw.headers["X-Mesh-Confidence"]) <= 1
    assert raw.headers["X-Mesh-Escalated"] == "false"
    assert raw.headers["X-Mesh-Route-Path"].startswith(peer["peer_id"][:12] + "/" + MODEL + "@")
    c = raw.parse()
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-") and c.model == MODEL
    [choice] = c.choices
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= c.usage.completion_tokens <= 8 and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.mesh["peer"] == peer["peer_id"] and c.mesh["peer_name"] == "alpha" and c.mesh["model"] == MODEL
    assert c.mesh["path"][0]["model"] == MODEL


def test_chat_completion_stream(peer):
    stream = client(peer).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
        max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    last_choice = [ch for ch in chunks if ch.choices][-1]
    assert last_choice.choices[0].finish_reason in ("stop", "length")
    assert last_choice.mesh["model"] == MODEL and last_choice.mesh["restarted"] is False
    usage = chunks[-1]
    assert usage.choices == [] and 1 <= usage.usage.completion_tokens <= 8


def test_models_list(peer):
    ids = [m.id for m in client(peer).models.list()]
    assert "mesh" in ids and MODEL in ids


def test_text_completion(peer):
    c = client(peer).completions.create(model="mesh", prompt="Say hi.", max_tokens=6)
    assert c.object == "text_completion" and c.choices[0].text.strip()
    assert 1 <= c.usage.completion_tokens <= 6 and c.mesh["model"] == MODEL


def test_wrong_key_and_no_key(peer):
    with pytest.raises(openai.AuthenticationError) as e:
        client(peer, key="mesh-" + "A" * 43).models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):  # loopback, but this peer asks for a key anyway
        client(peer, key="anything").chat.completions.create(model="mesh", messages=HI, max_tokens=4)


def test_revoked_key_refused_by_the_running_peer(peer):
    token, key_id = make_key(peer["data"], "short-lived")  # made while the peer runs
    assert "mesh" in [m.id for m in client(peer, key=token).models.list()]
    listed = json.loads(run_mesh("keys", "list", "--json", data_dir=peer["data"]).stdout)
    assert {"id": key_id, "name": "short-lived", "revoked": False} in [
        {k: v for k, v in x.items() if k != "created"} for x in listed]
    r = run_mesh("keys", "revoke", key_id, data_dir=peer["data"])
    assert r.returncode == 0, r.stderr
    with pytest.raises(openai.AuthenticationError) as e:
        client(peer, key=token).models.list()
    assert "revoked" in str(e.value)
    assert client(peer).models.list()  # the other key still works


@pytest.mark.parametrize("kw,param", [
    ({"messages": HI, "temperature": "hot"}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": HI, "n": 3}, "n"),
])
def test_bad_request(peer, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(peer).chat.completions.create(model="mesh", max_tokens=4, **kw)
    assert e.value.param == param


def test_unknown_model_is_not_found(peer):
    with pytest.raises(openai.NotFoundError) as e:
        client(peer).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=4)
    assert e.value.code == "model_not_found"


def test_body_over_one_mib_is_413(peer):
    body = json.dumps({"model": "mesh", "messages": [{"role": "user", "content": "a" * (1 << 20)}]}).encode()
    req = urllib.request.Request(peer["url"] + "/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + peer["key"]})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413
    assert json.loads(e.value.read())["error"]["code"] == "request_too_large"


def scrape(peer) -> dict:
    req = urllib.request.Request(peer["url"] + "/metrics", headers={"Authorization": "Bearer " + peer["key"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def tokens_and_cancelled(peer) -> tuple[float, float]:
    """The peer's own counts: completion tokens of the answers it kept, and HTTP prompts
    that ended because the caller went away."""
    s = scrape(peer)
    tokens = sum(v for (name, _), v in s.items() if name == "mesh_tokens_generated_total")
    return tokens, s.get(("mesh_requests_total", (("entry", "http"), ("outcome", "cancelled"))), 0.0)


def test_client_gone_mid_stream_stops_generation(peer):
    c = client(peer)
    tokens_before, cancelled_before = tokens_and_cancelled(peer)
    stream = c.chat.completions.create(
        model="mesh", messages=[{"role": "user", "content": "Write a very long story about a dragon, at least 2000 words."}],
        max_tokens=900, stream=True, temperature=1.0, seed=2)  # with this seed: all 900 tokens when let run
    it = iter(stream)
    next(it)
    next(it)
    stream.close()  # hang up after the first words; the peer has one generation slot
    answer = c.chat.completions.create(model="mesh", messages=HI, max_tokens=4)
    assert answer.choices[0].message.content
    deadline = time.monotonic() + 30
    while (now := tokens_and_cancelled(peer))[1] == cancelled_before:
        assert time.monotonic() < deadline, "the abandoned prompt was never recorded as cancelled"
        time.sleep(0.05)
    # Counted in tokens by the peer: the abandoned answer added none (it never finished;
    # let run, it would have added its 900), only the follow-up's own.
    assert now == (tokens_before + answer.usage.completion_tokens, cancelled_before + 1)


def test_rate_limit_and_keyless_loopback(tmp_path):
    """A peer on the default loopback bind: callers here need no key (the SDK's dummy key
    is ignored); a burst past --http-burst gets 429 with Retry-After."""
    p = PeerProcess(tmp_path / "rl", "--ctx", "512", "--threads", "1", "--http-rate", "0.2", "--http-burst", "2")
    try:
        url = p.wait_ready()["http"]
        c = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=60)
        answer = c.chat.completions.create(model="mesh", messages=HI, max_tokens=4)
        assert answer.choices[0].message.content
        assert "mesh" in [m.id for m in c.models.list()]
        with pytest.raises(openai.RateLimitError) as e:
            c.models.list()
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["Retry-After"]) >= 1
    finally:
        p.stop()
