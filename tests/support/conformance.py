"""The Backend contract (mesh/inference/backend.py) as checks any backend's tests can run.

Each ``check_*`` takes a started backend built with ``queue_limit=1`` (one generation
running, one waiting, the next one busy). ``tests/inproc/test_backend_conformance.py``
runs them against the engine process, the in-process llama.cpp backend and the scripted
twin; ``test_openai_backend.py`` against a real OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.errors import BackendBusy, InvalidRequest
from mesh.inference.backend import Backend, FinalStats, GenerationRequest, Load, Message, TextChunk

PROMPT = "Write a long story about a dragon who learns to fly."
LONG = 256  # max_tokens of a request that must still be running when the test acts (~3 s of llama)
SCRIPT = tuple(f" word{i}" for i in range(LONG + 50))
EARLY_STOP_TOKENS = 32  # tokens a closed generation may still make before it stops (far below LONG)

def ask(max_tokens: int = 8, prompt: str = PROMPT, **kw) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, max_tokens=max_tokens, temperature=0.0, **kw)


class CountingSleep:
    """The scripted twin's injected ``sleep``, awaited once before each token it yields:
    its calls are the twin's count of tokens generated."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, seconds: float) -> None:
        self.calls += 1
        await asyncio.sleep(seconds)


async def collect(backend, request):
    return [item async for item in backend.stream(request)]


async def answer_and_evaluated(backend, request) -> tuple[str, FinalStats, int]:
    """The answer's text, its stats, and the prompt tokens the backend evaluated for it
    (``prompt_tokens_evaluated``, counted by backends with a session cache)."""
    before = backend.prompt_tokens_evaluated
    items = await collect(backend, request)
    final = next(i for i in items if isinstance(i, FinalStats))
    return "".join(i.text for i in items if isinstance(i, TextChunk)), final, backend.prompt_tokens_evaluated - before


async def wait_until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def wait_for(cond, timeout_s: float = 10.0) -> None:
    """Block until ``cond()`` holds (polling), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


async def hold_running_and_waiting(backend):
    """Start one long generation (running) and one request behind it (waiting)."""
    running = backend.stream(ask(LONG))
    first = await running.__anext__()
    assert isinstance(first, TextChunk)
    waiting = backend.stream(ask(4))
    waiting_next = asyncio.create_task(waiting.__anext__())
    await wait_until(lambda: backend.waiting == 1)
    assert backend.running == 1
    assert backend.load() == Load(running=1, waiting=1)  # what gossip reports as this peer's load
    return running, waiting, waiting_next


def check_stream(items, backend, max_tokens):
    assert items, "stream yielded nothing"
    *chunks, final = items
    assert all(type(c) is TextChunk for c in chunks), items
    assert type(final) is FinalStats
    assert final.model == backend.capabilities.model
    assert 1 <= final.completion_tokens <= max_tokens
    assert final.prompt_tokens > 0
    assert final.finish_reason in ("stop", "length")
    assert 0.0 <= final.time_to_first_token_s <= final.generation_s
    assert final.tokens_per_s >= 0.0
    return "".join(c.text for c in chunks), final


def check_is_a_backend(backend):
    assert isinstance(backend, Backend)
    caps = backend.capabilities
    assert caps.model and caps.context_length > 0 and caps.tokens_per_s >= 0
    assert (caps.parallel, caps.queue_limit) == (1, 1)


def check_stream_yields_chunks_then_exactly_one_final_stats(backend):
    items = asyncio.run(collect(backend, ask(8)))
    text, final = check_stream(items, backend, 8)
    assert text.strip()
    assert backend.running == 0 and backend.waiting == 0


def check_confidence_is_a_probability(backend):
    final = asyncio.run(collect(backend, ask(8)))[-1]
    assert 0.0 < final.confidence <= 1.0
    assert 0.0 <= final.min_token_prob <= final.confidence


def check_finish_reason_length_when_max_tokens_small(backend):
    items = asyncio.run(collect(backend, ask(3)))
    _, final = check_stream(items, backend, 3)
    assert final.finish_reason == "length"
    assert final.completion_tokens == 3


def check_busy_past_the_queue_limit(backend):
    async def main():
        running, waiting, waiting_next = await hold_running_and_waiting(backend)
        with pytest.raises(BackendBusy, match="busy"):
            await backend.stream(ask(4)).__anext__()
        await running.aclose()
        # The waiting request now runs to completion.
        items = [await waiting_next] + [item async for item in waiting]
        check_stream(items, backend, 4)

    asyncio.run(main())
    assert backend.running == 0 and backend.waiting == 0


def check_early_aclose_stops_generation_and_frees_the_slot(backend, tokens_generated):
    """A LONG generation closed after its first chunk stops there, counted in tokens:
    ``tokens_generated()`` is the running count of tokens generated behind ``backend``,
    by the engine's own counter (each kind's test module says where it reads it; None
    where no counter is visible from the test, and then only the slot is checked). The
    closed answer and a 4-token follow-up add at most ``4 + EARLY_STOP_TOKENS``; running
    on, the closed one alone would add about LONG."""

    async def main():
        started = backend.started_count
        stream = backend.stream(ask(LONG))
        assert isinstance(await stream.__anext__(), TextChunk)
        await stream.aclose()
        # aclose returns only once the worker has stopped and released the slot.
        assert backend.running == 0 and backend.waiting == 0
        items = await collect(backend, ask(4))
        check_stream(items, backend, 4)
        assert backend.started_count == started + 2

    if tokens_generated is None:
        asyncio.run(main())
        return
    before = tokens_generated()
    asyncio.run(main())
    spent = tokens_generated() - before
    assert spent >= 1, "the counter did not see the follow-up answer: it counts nothing"
    assert spent <= 4 + EARLY_STOP_TOKENS, f"{spent} tokens generated: the closed answer ran on"


def check_cancelling_the_consumer_frees_the_slot(backend):
    async def main():
        got_first = asyncio.Event()

        async def consume():
            async for _ in backend.stream(ask(LONG)):
                got_first.set()

        task = asyncio.create_task(consume())
        await got_first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.running == 0 and backend.waiting == 0
        check_stream(await collect(backend, ask(4)), backend, 4)

    asyncio.run(main())


def check_cancelled_waiting_request_never_runs(backend):
    async def main():
        running, waiting, waiting_next = await hold_running_and_waiting(backend)
        started = backend.started_count
        waiting_next.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting_next
        assert backend.waiting == 0
        await running.aclose()
        check_stream(await collect(backend, ask(4)), backend, 4)
        # Only the last request started after the cancelled one was queued.
        assert backend.started_count == started + 1

    asyncio.run(main())


def check_prompt_too_long_for_the_context_is_invalid_and_holds_no_slot(backend):
    n_ctx = backend.capabilities.context_length

    async def main():
        with pytest.raises(InvalidRequest, match="context"):
            await collect(backend, ask(16, prompt="word " * n_ctx))
        with pytest.raises(InvalidRequest, match="context"):
            await collect(backend, ask(n_ctx))  # a short prompt, but no room to answer
        # Refused requests released their admission: one running + one waiting still fit.
        running, waiting, waiting_next = await hold_running_and_waiting(backend)
        waiting_next.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting_next
        await running.aclose()

    asyncio.run(main())
    assert backend.running == 0 and backend.waiting == 0


INVALID_REQUESTS = [
    GenerationRequest(messages=()),
    GenerationRequest(messages=(Message("user", "   "),)),
    GenerationRequest(messages=(Message("robot", "hi"),)),
    ask(max_tokens=0),
    GenerationRequest.from_prompt("hi", temperature=3.0),
]
INVALID_IDS = ["no-messages", "blank", "bad-role", "max-tokens-0", "temperature"]


def check_invalid_request_raises_invalid_request(backend, request_):
    with pytest.raises(InvalidRequest):
        asyncio.run(collect(backend, request_))
