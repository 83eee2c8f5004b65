"""OpenAIBackend: the shared Backend contract and the happy path against a REAL
OpenAI-compatible server (``python -m llama_cpp.server`` on 127.0.0.1 with the default
model, ``tests/openai_server.py``); error paths the real server cannot be made to
produce (401, 429, 5xx, malformed streams) injected with ``httpx.MockTransport``; the SSE
decoder and the wire parsing as pure code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import socket

import httpx
import pytest

from mesh.errors import BackendBusy, Cancelled, ConfigError, GenerationError, InvalidRequest, MeshError
from mesh.inference import openai_wire as wire
from mesh.inference.backend import Backend, FinalStats, GenerationRequest, Message, TextChunk
from mesh.inference.openai_backend import BackendAuthError, BackendUnavailable, OpenAIBackend, redact
from mesh.inference.sse import SSEDecoder, SSEError, SSEEvent
from support import conformance as suite
from support.openai_server import LlamaServer

N_CTX = 512
KEY = "sk-test-7f3a9c1e5b2d8046"


@pytest.fixture(scope="module")
def server():
    with LlamaServer(n_ctx=N_CTX) as s:
        yield s


def real_backend(server, **kw) -> OpenAIBackend:
    kw = {"context_length": server.n_ctx, "max_concurrency": 1, "queue_limit": 1, **kw}
    return OpenAIBackend(server.base_url, server.model, **kw)


async def collect(backend, request):
    return [item async for item in backend.stream(request)]


def ask_once(backend, request=None):
    """One request in a fresh event loop, then close the backend (and its connections)."""

    async def main():
        try:
            return await collect(backend, request or suite.ask(8))
        finally:
            await backend.aclose()

    return asyncio.run(main())


def split(items):
    *chunks, final = items
    assert all(type(c) is TextChunk for c in chunks) and type(final) is FinalStats
    return "".join(c.text for c in chunks), final


# ---------------------------------------------------------------- the shared contract, real server


# The suite's tests, run here against this module's `backend` fixture (wrapped, so that
# marking them `model` here leaves the suite's own objects alone). Its aclose test builds
# backends by kind, and its early-aclose check needs this server's token count, so those
# two are written out below.
def _on_the_real_server(test):
    @functools.wraps(test)
    def wrapper(**kwargs):
        return test(**kwargs)

    return pytest.mark.model(wrapper)


test_is_a_backend = _on_the_real_server(suite.check_is_a_backend)
test_stream_yields_chunks_then_exactly_one_final_stats = _on_the_real_server(
    suite.check_stream_yields_chunks_then_exactly_one_final_stats
)
test_confidence_is_a_probability = _on_the_real_server(suite.check_confidence_is_a_probability)
test_finish_reason_length_when_max_tokens_small = _on_the_real_server(
    suite.check_finish_reason_length_when_max_tokens_small
)
test_busy_past_the_queue_limit = _on_the_real_server(suite.check_busy_past_the_queue_limit)

_EVAL_RUNS = re.compile(r"llama_perf_context_print: +eval time = .*/ +(\d+) runs")


def decoded_tokens(server) -> int:
    """The server's own count of tokens decoded: llama.cpp prints it ("eval time = ... /
    N runs") when a generation ends, so a finished one counts all of its tokens, and one
    stopped on disconnect prints nothing."""
    return sum(int(n) for n in _EVAL_RUNS.findall(server.log()))


@pytest.mark.model
def test_early_aclose_stops_generation_and_frees_the_slot(backend, server):
    prints = len(_EVAL_RUNS.findall(server.log()))
    after_follow_up = []

    def tokens_generated() -> int:
        if after_follow_up:  # the follow-up answered: wait (bounded) for its count to be printed
            suite.wait_for(lambda: len(_EVAL_RUNS.findall(server.log())) > prints)
        after_follow_up.append(True)
        return decoded_tokens(server)

    suite.check_early_aclose_stops_generation_and_frees_the_slot(backend, tokens_generated)
test_cancelling_the_consumer_frees_the_slot = _on_the_real_server(suite.check_cancelling_the_consumer_frees_the_slot)
test_cancelled_waiting_request_never_runs = _on_the_real_server(suite.check_cancelled_waiting_request_never_runs)
test_invalid_request_raises_invalid_request = pytest.mark.parametrize(
    "request_", suite.INVALID_REQUESTS, ids=suite.INVALID_IDS
)(_on_the_real_server(suite.check_invalid_request_raises_invalid_request))
test_prompt_too_long_for_the_context_is_invalid_and_holds_no_slot = _on_the_real_server(
    suite.check_prompt_too_long_for_the_context_is_invalid_and_holds_no_slot
)


@pytest.fixture(scope="module")
def backend(server):
    # Module-scoped and used from one asyncio.run per test, as the suite does: the backend
    # opens a fresh client in each new loop.
    b = real_backend(server)
    yield b
    asyncio.run(b.aclose())


@pytest.mark.model
def test_conformance_aclose_cancels_waiting_and_running_and_refuses_new_work(server):
    backend = real_backend(server)

    async def main():
        running, _waiting, waiting_next = await suite.hold_running_and_waiting(backend)
        await backend.aclose()
        with pytest.raises(Cancelled):
            await waiting_next
        with pytest.raises(Cancelled):
            async for _ in running:
                pass
        with pytest.raises(Cancelled):
            await collect(backend, suite.ask(4))
        await backend.aclose()  # idempotent

    asyncio.run(main())


# ---------------------------------------------------------------- the real server: what only this backend has


async def raw_answer(server, request: GenerationRequest, *, stream: bool):
    """Ask the server directly (no backend): (text, chosen-token logprobs or None, usage)."""
    body = wire.request_body(request, model=server.model, logprobs=stream, include_usage=stream)
    body["stream"] = stream
    async with httpx.AsyncClient(timeout=30) as client:
        if not stream:
            r = (await client.post(f"{server.base_url}/chat/completions", json=body)).json()
            return r["choices"][0]["message"]["content"], None, r["usage"]
        text, lps = "", []
        async with client.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    text += choice["delta"].get("content") or ""
                    lps += [e["logprob"] for e in (choice.get("logprobs") or {}).get("content") or []]
        return text, lps, None


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, keeping a copy of every response body as it streams by."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.bodies: list[bytearray] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        body = bytearray()
        self.bodies.append(body)
        real_stream = response.stream

        class Tee(httpx.AsyncByteStream):
            async def __aiter__(self):
                async for chunk in real_stream:
                    body.extend(chunk)
                    yield chunk

            async def aclose(self) -> None:
                await real_stream.aclose()

        return httpx.Response(response.status_code, headers=response.headers, stream=Tee(),
                              extensions=response.extensions, request=request)

    async def aclose(self) -> None:
        await self._real.aclose()


def sse_answer(body: bytes) -> tuple[str, list[float]]:
    """Text and chosen-token logprobs of one recorded SSE response, parsed independently."""
    text, lps = "", []
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            text += choice["delta"].get("content") or ""
            lps += [e["logprob"] for e in (choice.get("logprobs") or {}).get("content") or []]
    return text, lps


@pytest.mark.model
def test_streamed_answer_matches_the_servers_own_answers_and_counts(server):
    """What the backend makes of a stream is exactly what the server sent in that stream
    (text, token count, confidence from its logprobs). Compared with the bytes of the same
    response, not with a second request: a server may answer two identical greedy
    requests differently (its prompt cache changes the arithmetic)."""
    request = GenerationRequest.from_prompt("Name three colours.", max_tokens=12, temperature=0.0, seed=7)
    transport = RecordingTransport()

    async def main():
        async with httpx.AsyncClient(transport=transport, timeout=30) as client:
            backend = real_backend(server, client=client)
            items = await collect(backend, request)
        _, _, usage = await raw_answer(server, request, stream=False)
        return backend, items, usage

    backend, items, usage = asyncio.run(main())
    assert len(transport.bodies) == 1
    sent_text, lps = sse_answer(bytes(transport.bodies[0]))
    text, final = split(items)
    assert len(items) - 1 == final.completion_tokens  # one chunk per token from this server
    assert text == sent_text and text
    assert final.completion_tokens == len(lps) == 12 == usage["completion_tokens"]  # max_tokens reached both times
    # This server sends no usage when streaming: the prompt is estimated from its text. The
    # real count is higher: SmolLM2's template adds a default system turn no estimate sees.
    assert final.prompt_tokens == wire.estimate_prompt_tokens(request.messages, chars_per_token=4.0)
    assert 0 < final.prompt_tokens < usage["prompt_tokens"]
    # Confidence from the server's own per-token logprobs, of this very answer.
    assert final.confidence == pytest.approx(math.exp(sum(lps) / len(lps)))
    assert final.min_token_prob == pytest.approx(math.exp(min(lps)))
    assert 0 < final.min_token_prob <= final.confidence < 1
    assert backend.capabilities.extra["logprobs"] is True
    assert backend.capabilities.tokens_per_s > 0
    assert final.finish_reason == "length"


@pytest.mark.model
def test_without_logprobs_confidence_is_the_declared_unmeasured_value(server):
    backend = real_backend(server, request_logprobs=False, unmeasured_confidence=0.5)
    text, final = split(ask_once(backend, suite.ask(5)))
    assert text and final.completion_tokens == 5  # counted from the text chunks
    assert (final.confidence, final.min_token_prob) == (0.5, 0.5)
    assert backend.capabilities.extra["logprobs"] is None  # never asked, so not known


@pytest.mark.model
def test_early_close_makes_the_server_stop(server):
    backend = real_backend(server)
    before = decoded_tokens(server)
    prints = len(_EVAL_RUNS.findall(server.log()))

    async def main():
        stream = backend.stream(suite.ask(suite.LONG))
        assert isinstance(await stream.__anext__(), TextChunk)
        await stream.aclose()
        # The server answers the next request only once the first no longer holds it.
        items = await collect(backend, suite.ask(1))
        await backend.aclose()
        return items

    assert split(asyncio.run(main()))[1].completion_tokens == 1
    suite.wait_for(lambda: len(_EVAL_RUNS.findall(server.log())) > prints)
    # Counted by the server: the 1-token answer decodes at most 1 more; let run, the
    # abandoned answer would have decoded about LONG.
    assert decoded_tokens(server) - before <= 1 + suite.EARLY_STOP_TOKENS
    assert "Disconnected from client" in server.log()


@pytest.mark.model
def test_a_prompt_the_server_cannot_fit_is_a_clear_generation_error(server):
    # Declared context larger than the server's: the local check passes, and this server
    # reports the overflow only by ending the stream empty.
    backend = real_backend(server, context_length=8 * N_CTX)
    with pytest.raises(GenerationError, match="ended the stream before the answer was complete"):
        ask_once(backend, suite.ask(8, prompt="word " * (2 * N_CTX)))


async def silence(writer: asyncio.StreamWriter) -> None:
    """A stub server's connection that says nothing more until the client hangs up."""
    try:
        await asyncio.sleep(30)  # cancelled when the test's event loop ends
    finally:
        writer.close()


def test_connection_refused_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m")
        with pytest.raises(BackendUnavailable, match=f"cannot reach http://127.0.0.1:{port}/v1/chat/completions"):
            ask_once(backend, suite.ask(4))
    assert backend.running == 0


def test_a_silent_server_times_out_as_unavailable():
    async def main():
        async def handler(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            await silence(writer)  # never answers

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.3)
        try:
            with pytest.raises(BackendUnavailable, match=r"sent nothing for 0.3 s"):
                await collect(backend, suite.ask(4))
        finally:
            await backend.aclose()
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())


def test_aclose_interrupts_a_read_in_progress():
    """A stream waiting on a stalled server is failed with Cancelled by aclose()."""

    async def main():
        async def handler(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await silence(writer)  # then stalls

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m")
        stream = backend.stream(suite.ask(4))
        assert await stream.__anext__() == TextChunk("hi")
        pending = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(backend.aclose(), 2)
        with pytest.raises(Cancelled):
            await asyncio.wait_for(pending, 2)
        assert backend.running == 0
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


# ---------------------------------------------------------------- injected errors (httpx.MockTransport)


def sse(*events: str | dict, done: bool = True) -> bytes:
    out = b"".join(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(text: str | None = None, *, finish: str | None = None, logprobs: list[float] | None = None) -> dict:
    choice: dict = {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": lp} for lp in logprobs]}
    return {"object": "chat.completion.chunk", "choices": [choice]}


GOOD = sse(
    delta("Hel", logprobs=[-0.1]),
    delta("lo", logprobs=[-0.2]),
    delta(finish="stop"),
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}},
)


def stub(handler, **kw) -> OpenAIBackend:
    """A backend whose HTTP goes to ``handler(request) -> httpx.Response``."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIBackend("https://llm.example/v1", "cloud-model", client=client, **kw)


def event_stream(body: bytes, *, piece: int | None = None, status: int = 200, headers: dict | None = None):
    async def pieces():
        step = piece or len(body) or 1
        for i in range(0, len(body), step):
            yield body[i : i + step]

    return httpx.Response(status, headers={"content-type": "text/event-stream", **(headers or {})}, content=pieces())


@pytest.mark.parametrize("piece", [None, 1, 7])
def test_parses_any_chunking_and_uses_usage_and_logprobs(piece):
    sent = []

    def handler(request):
        sent.append(request)
        return event_stream(b": keep-alive\n\n" + GOOD.replace(b"\n", b"\r\n"), piece=piece)

    backend = stub(handler, api_key=KEY)
    text, final = split(ask_once(backend))
    assert text == "Hello"
    assert (final.prompt_tokens, final.completion_tokens, final.finish_reason) == (11, 2, "stop")
    assert final.confidence == pytest.approx(math.exp(-0.15))
    assert final.min_token_prob == pytest.approx(math.exp(-0.2))
    assert final.model == "cloud-model"
    (req,) = sent
    assert str(req.url) == "https://llm.example/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(req.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] is True and body["top_logprobs"] == 0
    assert body["model"] == "cloud-model" and body["max_tokens"] == 8


def test_401_is_an_auth_error_that_never_shows_the_key(caplog):
    def handler(request):
        masked = f"{KEY[:6]}***{KEY[-4:]}"
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {masked} ({KEY})"}})

    backend = stub(handler, api_key=KEY)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendAuthError, match="refused the API key .HTTP 401.") as err:
        ask_once(backend)
    shown = [str(err.value), repr(err.value), repr(backend), str(backend.capabilities), caplog.text]
    for text in shown:
        assert KEY not in text and KEY[:6] not in text and KEY[-4:] not in text
    assert isinstance(err.value, GenerationError) and backend.running == 0


def test_403_without_a_key_says_to_set_one():
    backend = stub(lambda r: httpx.Response(403, json={"error": "forbidden"}))
    with pytest.raises(BackendAuthError, match="MESH_CLOUD_API_KEY"):
        ask_once(backend)


def test_429_is_busy_with_the_retry_hint():
    backend = stub(
        lambda r: httpx.Response(429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}})
    )
    with pytest.raises(BackendBusy, match=r"rate limiting \(HTTP 429, retry after 3 s\): slow down"):
        ask_once(backend)
    assert backend.running == 0


def test_400_is_invalid_request_with_the_servers_message():
    backend = stub(lambda r: httpx.Response(400, json={"error": {"message": "messages[0].content is too odd"}}))
    with pytest.raises(InvalidRequest, match="too odd"):
        ask_once(backend)


@pytest.mark.parametrize(
    "status, error",
    [(500, GenerationError), (502, BackendUnavailable), (503, BackendUnavailable), (404, GenerationError)],
)
def test_server_errors_are_generation_errors(status, error):
    backend = stub(lambda r: httpx.Response(status, text="upstream exploded"))
    with pytest.raises(error, match=f"HTTP {status}|answered {status}") as err:
        ask_once(backend)
    assert isinstance(err.value, GenerationError) and "upstream exploded" in str(err.value)


def test_a_server_refusing_logprobs_is_asked_again_without_them():
    bodies = []

    def handler(request):
        body = json.loads(request.content)
        bodies.append(body)
        if body.get("logprobs"):
            return httpx.Response(400, json={"error": {"message": "logprobs is not supported with this model"}})
        return event_stream(sse(delta("ok"), delta(finish="stop")))

    backend = stub(handler, unmeasured_confidence=0.8)

    async def twice():
        return [await collect(backend, suite.ask(8)) for _ in range(2)]

    for items in asyncio.run(twice()):
        text, final = split(items)
        assert (text, final.confidence, final.completion_tokens) == ("ok", 0.8, 1)
    assert [("logprobs" in b) for b in bodies] == [True, False, False]  # never asked again
    assert backend.capabilities.extra["logprobs"] is False


@pytest.mark.parametrize(
    "body, message",
    [
        (sse("not json"), "malformed answer: an event is not JSON"),
        (sse({"choices": [{"index": 0, "delta": {"content": 5}}]}), "'delta.content' is not a string"),
        (sse({"choices": "x"}), "'choices' is not a list"),
        (sse(delta("a", logprobs=["x"])), "no numeric 'logprob'"),
        (sse(delta("a"), {"usage": {"prompt_tokens": -1}}), "'usage.prompt_tokens' is not a count"),
        (sse(delta("a")), "ended the stream before the answer was complete"),  # [DONE], no finish reason
        (sse(delta("a"), done=False), "ended the stream before the answer was complete"),  # cut off
        (b"data: " + b"x" * (2 << 20) + b"\n\n", "broken event stream"),
        (sse(delta("a"), {"error": {"message": "the GPU caught fire"}}), "failed mid-answer: the GPU caught fire"),
    ],
    ids=["not-json", "content-type", "choices", "logprob", "usage", "no-finish", "cut-off", "oversize", "error-event"],
)
def test_malformed_streams_are_clear_generation_errors(body, message):
    backend = stub(lambda r: event_stream(body, piece=4096))
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ask_once(backend)
    assert backend.running == 0


def test_a_context_overflow_reported_mid_stream_is_invalid_request():
    error = {
        "error": {"message": "This model's maximum context length is 4096 tokens", "code": "context_length_exceeded"}
    }
    backend = stub(lambda r: event_stream(sse(error)))
    with pytest.raises(InvalidRequest, match="maximum context length"):
        ask_once(backend)


def test_json_instead_of_an_event_stream_is_a_generation_error():
    backend = stub(lambda r: httpx.Response(200, json={"error": {"message": "stream not supported"}}))
    with pytest.raises(GenerationError, match="not an event stream: stream not supported"):
        ask_once(backend)


def test_a_finish_reason_without_done_is_complete():
    backend = stub(lambda r: event_stream(sse(delta("a"), delta("b", finish="length"), done=False)))
    text, final = split(ask_once(backend, suite.ask(2)))
    assert (text, final.finish_reason, final.completion_tokens) == ("ab", "length", 2)


# ---------------------------------------------------------------- construction, environment, secrets


def test_from_env_reads_the_three_variables_and_hides_the_key():
    env = {"MESH_CLOUD_URL": "https://api.example.com/v1/", "MESH_CLOUD_MODEL": "big-1", "MESH_CLOUD_API_KEY": KEY}
    backend = OpenAIBackend.from_env(env, context_length=128_000, tier=3)
    assert isinstance(backend, Backend)
    caps = backend.capabilities
    assert (caps.model, caps.context_length, caps.extra["tier"]) == ("big-1", 128_000, 3)
    assert caps.extra["endpoint"] == "https://api.example.com/v1/chat/completions"
    for text in (repr(backend), str(caps), str(vars(backend))):
        assert KEY not in text
    assert "<secret>" in repr(backend)


@pytest.mark.parametrize(
    "env, match",
    [({}, "MESH_CLOUD_URL is not set"), ({"MESH_CLOUD_URL": "http://h/v1"}, "MESH_CLOUD_MODEL is not set")],
)
def test_from_env_says_what_is_missing(env, match):
    with pytest.raises(ConfigError, match=match):
        OpenAIBackend.from_env(env)


@pytest.mark.parametrize(
    "url", ["ftp://h/v1", "not a url", "https://user:pw@h/v1", "/v1"], ids=["scheme", "garbage", "userinfo", "relative"]
)
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        OpenAIBackend(url, "m")


@pytest.mark.parametrize("key", ["", "sk-has space", "sk-new\nline", "sk-é"])
def test_a_key_no_header_can_carry_is_refused_without_quoting_it(key):
    with pytest.raises(ConfigError, match="API key") as err:
        OpenAIBackend("https://h/v1", "m", api_key=key)
    assert not key or key not in str(err.value)


def test_a_full_endpoint_url_is_used_as_is():
    b = OpenAIBackend("http://127.0.0.1:11434/v1/chat/completions?x=1", "m")
    assert b.capabilities.extra["endpoint"] == "http://127.0.0.1:11434/v1/chat/completions"


def test_redact_hides_the_key_and_masked_echoes():
    assert redact(f"key {KEY} and {KEY[:5]}…{KEY[-4:]}: bad", KEY) == "key <secret> and <secret>: bad"
    assert redact("nothing here", KEY) == "nothing here"
    assert redact("short abc", "abc") == "short <secret>"


# ---------------------------------------------------------------- the SSE decoder and wire parsing (pure)


def feed_all(pieces) -> list[SSEEvent]:
    d = SSEDecoder()
    return [e for p in pieces for e in d.feed(p)] + d.close()


STREAM = (
    "\ufeff: comment\r\nevent: update\r\ndata: é1\r\ndata:two\r\nid: 7\r\nretry: 10\r\n\r\ndata\n\n: ping\n\n".encode()
)


def test_sse_events_are_the_same_however_the_bytes_are_split():
    want = [SSEEvent("é1\ntwo", "update", "7"), SSEEvent("", "message", "7")]
    assert feed_all([STREAM]) == want
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == want  # splits "é" and "\r\n"


def test_sse_bare_cr_line_ends_and_end_of_stream():
    assert feed_all([b"data: a\rdata: b\r", b"\r"]) == [SSEEvent("a\nb")]
    assert feed_all([b"data: last\n"]) == [SSEEvent("last")]  # no blank line before EOF
    assert feed_all([b"data: cut"]) == []  # an unterminated line is a truncated read


def test_sse_limits():
    with pytest.raises(SSEError, match="line is longer"):
        SSEDecoder(max_line_chars=10).feed(b"data: " + b"x" * 20)
    d = SSEDecoder(max_event_chars=10)
    with pytest.raises(SSEError, match="event is larger"):
        d.feed(b"data: 123456\ndata: 123456\n")


def test_error_info_reads_every_dialect():
    assert wire.error_info(b'{"error": {"message": "m", "type": "t", "code": "c"}}') == wire.ErrorInfo("m", "t", "c")
    assert wire.error_info(b'{"error": "ollama says no"}').message == "ollama says no"
    assert wire.error_info(b'{"detail": [{"msg": "bad"}]}').message == '[{"msg": "bad"}]'
    assert wire.error_info(b"<html>502</html>").message == "<html>502</html>"
    assert wire.error_info(b"").message == "(empty body)"
    assert len(wire.error_info(b"x" * 10_000).message) == wire.MAX_MESSAGE_CHARS


def test_prompt_estimate_and_request_body():
    request = GenerationRequest(messages=(Message("system", "abcd" * 10), Message("user", "hi")), seed=3)
    assert wire.estimate_prompt_tokens(request.messages, chars_per_token=4.0) == 3 + (3 + 10) + (3 + 1)
    body = wire.request_body(request, model="m", logprobs=False, include_usage=False)
    assert body["seed"] == 3 and "logprobs" not in body and "stream_options" not in body
    assert body["messages"] == [{"role": "system", "content": "abcd" * 10}, {"role": "user", "content": "hi"}]


def test_every_error_raised_is_a_mesh_error():
    for cls in (BackendUnavailable, BackendAuthError):
        assert issubclass(cls, GenerationError) and issubclass(cls, MeshError)
