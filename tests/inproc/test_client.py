"""The Python client against an embedded peer: blocking, async streaming, errors, cancel.

The peer here serves the scripted backend (fast); tests/test_cli.py and the
real-model test at the end cover the llama.cpp path."""

import asyncio
import time

import pytest

from mesh import Client
from mesh.errors import BackendBusy, InvalidRequest, MeshError, PeerUnavailable, RemoteError
from mesh.testing import ScriptedBackend


@pytest.fixture
def scripted():
    backends = []

    def factory(config):
        b = ScriptedBackend(["The", " answer", " is", " 42", "."], confidence=0.8, model="scripted-1",
                            delay_s=0.0, queue_limit=0)
        backends.append(b)
        return b

    factory.backends = backends
    return factory


def test_blocking_ask_over_rpc(tmp_path, scripted):
    pieces = []
    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        a = client.ask("What is the answer?", on_text=pieces.append)
        assert a.text == "The answer is 42." and "".join(pieces) == a.text
        assert a.model == "scripted-1" and a.confidence == pytest.approx(0.8)
        assert a.peer == client.address.peer_id and a.completion_tokens == 5
        assert client.ask("again?", max_tokens=2).text == "The answer"
        info = client.info()
        assert info["answers"] == 2 and info["model"]["name"] == "scripted-1"
    req = scripted.backends[0].requests[0]
    assert req.messages[-1].content == "What is the answer?"


def test_system_prompt_and_options_reach_the_backend(tmp_path, scripted):
    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        client.ask("hi", system="be terse", max_tokens=3, temperature=0.1, top_p=0.5, seed=9)
    req = scripted.backends[0].requests[0]
    assert [m.role for m in req.messages] == ["system", "user"]
    assert (req.max_tokens, req.temperature, req.top_p, req.seed) == (3, 0.1, 0.5, 9)


def test_async_stream_and_answer(tmp_path, scripted):
    async def main(client):
        stream = client.astream("q")
        got = [t async for t in stream]
        await client.aclose()
        return got, stream.answer

    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        got, answer = asyncio.run(main(client))
    # the first token goes at once; tokens arriving within 50 ms of a send are merged
    assert got[0] == "The" and "".join(got) == "The answer is 42." and answer.finish_reason == "stop"


def test_blocking_ask_inside_a_loop_says_use_aask(tmp_path, scripted):
    async def main(client):
        with pytest.raises(MeshError, match="aask"):
            client.ask("hi")
        a = await client.aask("hi")
        await client.aclose()
        return a

    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        assert asyncio.run(main(client)).text == "The answer is 42."


def test_invalid_requests_are_refused_before_sending(tmp_path, scripted):
    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        with pytest.raises(InvalidRequest):
            client.ask("   ")
        with pytest.raises(InvalidRequest):
            client.ask("hi", max_tokens=0)
        with pytest.raises(InvalidRequest):
            client.ask("hi", temperature=5)
    assert scripted.backends[0].requests == []


def test_remote_validation_reports_invalid_request(tmp_path, scripted):
    async def main(client):
        with pytest.raises(InvalidRequest, match="messages"):
            await client.acall("ask", {"messages": "nope"}, timeout_s=5)
        with pytest.raises(InvalidRequest, match="max_tokens"):
            await client.acall("ask", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, timeout_s=5)
        with pytest.raises(InvalidRequest, match="role"):
            await client.acall("ask", {"messages": [{"role": "robot", "content": "x"}]}, timeout_s=5)
        await client.aclose()

    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        asyncio.run(main(client))


def test_call_any_method_blocking_and_async(tmp_path, scripted):
    with Client.embedded(tmp_path, backend_factory=scripted) as client:
        assert client.call("ping", timeout_s=5)["peer"] == client.address.peer_id
        assert client.call("info")["model"]["name"] == "scripted-1"  # the connection closed and reopened
        with pytest.raises(RemoteError) as e:
            client.call("no.such.method", {}, timeout_s=5)
        assert e.value.code == "unknown_method"

        async def inside_a_loop():
            with pytest.raises(MeshError, match="acall"):
                client.call("ping")
            try:
                return await client.acall("ping", timeout_s=5)
            finally:
                await client.aclose()

        assert asyncio.run(inside_a_loop())["peer"] == client.address.peer_id


def test_busy_peer_says_so_at_once(tmp_path):
    backend = ScriptedBackend(["tick"] * 1000, delay_s=0.01, queue_limit=0)

    async def main(client):
        first = client.astream("long", max_tokens=1000)
        assert await first.__anext__() == "tick"
        t0 = time.monotonic()
        with pytest.raises(BackendBusy):
            await client.aask("second")
        assert time.monotonic() - t0 < 2
        await first.aclose()  # cancels generation on the peer, freeing the slot
        for _ in range(100):
            if backend.running == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.running == 0
        a = await client.aask("third", max_tokens=2)
        await client.aclose()
        return a

    with Client.embedded(tmp_path, backend_factory=lambda c: backend) as client:
        assert asyncio.run(main(client)).text == "ticktick"


def test_no_peer(tmp_path):
    with pytest.raises(PeerUnavailable, match="no mesh peer is running"):
        Client(tmp_path).ask("hi")


def test_stale_peer_file_is_reported(tmp_path):
    import base64
    import json

    from mesh.identity.keys import Identity

    ident = Identity.generate()
    (tmp_path / "peer.json").write_text(json.dumps({
        "endpoint": "tcp://127.0.0.1:1", "peer_id": ident.peer_id_text,
        "public_key": base64.b64encode(ident.public_raw).decode(), "pid": 2**22 + 12345,
    }))
    with pytest.raises(PeerUnavailable, match="no longer running"):
        Client(tmp_path).ask("hi")
    (tmp_path / "peer.json").write_text("{not json")
    with pytest.raises(PeerUnavailable, match="unreadable"):
        Client(tmp_path).ask("hi")


@pytest.mark.model
def test_embedded_real_model(tmp_path):
    with Client.embedded(tmp_path) as client:
        a = client.ask("What is the capital of France?", max_tokens=12, temperature=0, seed=1)
    assert a.text.strip() and "SmolLM2" in a.model
    assert 0 < a.confidence <= 1 and 0 < a.min_token_prob <= a.confidence
    assert a.completion_tokens <= 12 and a.tokens_per_s > 0
