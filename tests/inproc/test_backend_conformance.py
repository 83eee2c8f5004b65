"""The Backend contract, run against every backend (checks: tests/support/conformance.py).

Kinds: ``engine`` (``EngineBackend``, llama.cpp in an engine process: what a peer runs),
``llama`` (``LlamaBackend``, llama.cpp in this process), both on the real default model
(marked ``model``), and ``scripted`` (``ScriptedBackend``, the in-memory twin), so the
twin cannot drift from the real thing.
"""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import BackendBusy, Cancelled, GenerationError
from mesh.inference.backend import GenerationRequest
from mesh.testing.backend import ScriptedBackend, split_tokens
from support import conformance as suite
from support.conformance import LONG, SCRIPT, ask, collect, hold_running_and_waiting

KINDS = [pytest.param("engine", marks=pytest.mark.model), pytest.param("llama", marks=pytest.mark.model), "scripted"]


def make_backend(kind: str, **kw):
    if kind == "engine":
        from mesh.inference.engine_backend import EngineBackend
        from mesh.inference.models import default_model_path

        b = EngineBackend(default_model_path(), n_ctx=2048, n_threads=2, queue_limit=1, **kw)
        b.start_blocking()
        return b
    if kind == "llama":
        from mesh.inference.llama import LlamaBackend

        return LlamaBackend(queue_limit=1, **kw)
    kw.pop("warmup_tokens", None)
    return ScriptedBackend(SCRIPT, delay_s=0.005, queue_limit=1, sleep=suite.CountingSleep())


def tokens_generated_by(backend):
    """The engine's own count of tokens generated so far, where the test can read it."""
    if isinstance(backend, ScriptedBackend):
        return lambda: backend._sleep.calls  # its CountingSleep, awaited once per token
    if type(backend).__name__ == "LlamaBackend":
        import llama_cpp

        llm = backend._runner._llm  # llama.cpp's decode counter: one eval per generated token after the first
        return lambda: llama_cpp.llama_perf_context(llm._ctx.ctx).n_eval
    return lambda: backend.tokens_generated  # the engine process: what its "done" frames reported


@pytest.fixture(scope="module", params=KINDS)
def backend(request):
    b = make_backend(request.param)
    yield b
    asyncio.run(b.aclose())


def test_is_a_backend(backend):
    suite.check_is_a_backend(backend)


def test_stream_yields_chunks_then_exactly_one_final_stats(backend):
    suite.check_stream_yields_chunks_then_exactly_one_final_stats(backend)


def test_confidence_is_a_probability(backend):
    suite.check_confidence_is_a_probability(backend)


def test_finish_reason_length_when_max_tokens_small(backend):
    suite.check_finish_reason_length_when_max_tokens_small(backend)


def test_busy_past_the_queue_limit(backend):
    suite.check_busy_past_the_queue_limit(backend)


def test_early_aclose_stops_generation_and_frees_the_slot(backend):
    suite.check_early_aclose_stops_generation_and_frees_the_slot(backend, tokens_generated_by(backend))


def test_cancelling_the_consumer_frees_the_slot(backend):
    suite.check_cancelling_the_consumer_frees_the_slot(backend)


def test_cancelled_waiting_request_never_runs(backend):
    suite.check_cancelled_waiting_request_never_runs(backend)


def test_prompt_too_long_for_the_context_is_invalid_and_holds_no_slot(backend):
    suite.check_prompt_too_long_for_the_context_is_invalid_and_holds_no_slot(backend)


@pytest.mark.parametrize("request_", suite.INVALID_REQUESTS, ids=suite.INVALID_IDS)
def test_invalid_request_raises_invalid_request(backend, request_):
    suite.check_invalid_request_raises_invalid_request(backend, request_)


@pytest.mark.parametrize("kind", KINDS)
def test_aclose_cancels_waiting_and_running_and_refuses_new_work(kind):
    backend = make_backend(kind, warmup_tokens=0)

    async def main():
        running, waiting, waiting_next = await hold_running_and_waiting(backend)
        await backend.aclose()
        with pytest.raises(Cancelled):
            await waiting_next
        with pytest.raises(Cancelled):
            async for _ in running:
                pass
        with pytest.raises(Cancelled):
            await collect(backend, ask(4))
        await backend.aclose()  # idempotent

    asyncio.run(main())


# ---- ScriptedBackend's own knobs (not part of the shared contract)


def test_scripted_reply_function_and_stats():
    backend = ScriptedBackend(reply=lambda r: f"echo: {r.messages[-1].content}", confidence=0.5, min_token_prob=0.1)
    items = asyncio.run(collect(backend, GenerationRequest.from_prompt("two words", max_tokens=10)))
    *chunks, final = items
    assert "".join(c.text for c in chunks) == "echo: two words"
    assert (final.completion_tokens, final.finish_reason) == (3, "stop")
    assert (final.confidence, final.min_token_prob) == (0.5, 0.1)
    assert final.prompt_tokens == 2
    assert backend.requests[0].messages[-1].content == "two words"


def test_scripted_engine_failure_is_a_generation_error():
    backend = ScriptedBackend(["a", "b", "c"], fail_after=2)

    async def main():
        seen = []
        with pytest.raises(GenerationError):
            async for item in backend.stream(GenerationRequest.from_prompt("x")):
                seen.append(item.text)
        assert seen == ["a", "b"]
        assert backend.running == 0

    asyncio.run(main())


def test_scripted_parallel_slots():
    backend = ScriptedBackend(SCRIPT, delay_s=0.001, parallel=2, queue_limit=0)

    async def main():
        a, b = backend.stream(ask(LONG)), backend.stream(ask(LONG))
        await a.__anext__()
        await b.__anext__()
        assert backend.running == 2
        with pytest.raises(BackendBusy):
            await backend.stream(ask(4)).__anext__()
        await a.aclose()
        await b.aclose()
        assert backend.running == 0

    asyncio.run(main())


def test_split_tokens_joins_back():
    for text in ["", "one", " lead and trail  ", "a\nb\tc"]:
        assert "".join(split_tokens(text)) == text
