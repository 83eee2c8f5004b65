"""A session's prompt cache on a real model (mesh.inference.session_cache): with another
conversation between two of its turns, the next turn evaluates only what it adds, gives
the same answer as a full evaluation, and counts a hit; a prompt that does not extend
the cached tokens, a seeded request and an evicted session are evaluated in full. And
the session id reaches the answering peer's backend through the router.

Behaviour, not speed: the counts are llama.cpp's own (``prompt_tokens_evaluated``).
Timings are bench/session_cache.py's.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from mesh.client import Client
from mesh.inference.backend import FinalStats, GenerationRequest, Message
from mesh.inference.llama import LlamaBackend
from mesh.inference.session_cache import SessionCacheConfig, common_prefix
from mesh.testing import ScriptedBackend
from support.conformance import answer_and_evaluated
from support.loopmesh import run, start_mesh, wait_for

A = (Message("user", "Name three planets of the solar system."),)
B = (Message("user", "What is the capital of France? Answer in one sentence."),)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def backend():
    b = LlamaBackend(rng=random.Random(1), session_cache=SessionCacheConfig(max_sessions=2))
    yield b
    asyncio.run(b.aclose())


def ask(backend, messages, *, session=None, seed=None) -> tuple[str, FinalStats, int]:
    """The answer, its stats, and the prompt tokens llama.cpp evaluated for it."""
    request = GenerationRequest(messages=tuple(messages), max_tokens=MAX_TOKENS, temperature=0.0,
                                session=session, seed=seed)
    return asyncio.run(answer_and_evaluated(backend, request))


def counters(backend) -> dict:
    return backend.status().session_cache


def cached_tokens(backend, session):
    entry = backend._runner.sessions.get(session)
    return None if entry is None else entry.tokens


def turn(messages, answer: str, question: str):
    return (*messages, Message("assistant", answer), Message("user", question))


@pytest.mark.model
def test_the_next_turn_after_another_conversation_evaluates_only_what_it_adds(backend):
    text, first, _ = ask(backend, A, session="s-a")
    ask(backend, B)  # another conversation takes the context
    second = turn(A, text, "Which of them is the largest?")
    kept = cached_tokens(backend, "s-a")
    hits = counters(backend)["hits"]

    cached_text, stats, evaluated = ask(backend, second, session="s-a")
    shared = common_prefix(kept, backend._runner._prompter.tokens(GenerationRequest(messages=second)))
    assert shared == len(kept) > first.prompt_tokens  # the new prompt extends the cached turn, answer included
    assert evaluated == stats.prompt_tokens - shared  # only the new user message (and its template)
    assert evaluated < stats.prompt_tokens / 2
    assert counters(backend)["hits"] == hits + 1

    ask(backend, B)
    full_text, full, full_evaluated = ask(backend, second)  # no session: evaluated from scratch
    assert full_evaluated > stats.prompt_tokens / 2
    assert cached_text == full_text and full.completion_tokens == stats.completion_tokens


@pytest.mark.model
def test_a_prompt_that_does_not_extend_the_cached_tokens_is_evaluated_past_the_shared_part(backend):
    text, _, _ = ask(backend, A, session="s-edit")
    kept = cached_tokens(backend, "s-edit")
    ask(backend, B)
    edited = turn((Message("user", "Name three rivers of Europe."),), text, "Which is the longest?")
    prompt = backend._runner._prompter.tokens(GenerationRequest(messages=edited))
    shared = common_prefix(kept, prompt)
    assert shared < len(kept)  # it diverges inside the first user message

    cached_text, stats, evaluated = ask(backend, edited, session="s-edit")
    assert evaluated == stats.prompt_tokens - shared
    assert cached_tokens(backend, "s-edit")[: len(prompt)] == tuple(prompt)  # the new history replaced the old
    ask(backend, B)
    full_text, _, _ = ask(backend, edited)
    assert cached_text == full_text


@pytest.mark.model
def test_a_seeded_turn_is_evaluated_from_scratch_and_gives_the_seeded_text(backend):
    text, _, _ = ask(backend, A, session="s-seed")
    ask(backend, B)
    second = turn(A, text, "Which of them is the smallest?")
    seeded_text, stats, evaluated = ask(backend, second, session="s-seed", seed=7)
    assert evaluated == stats.prompt_tokens
    again, _, _ = ask(backend, second, seed=7)
    assert seeded_text == again


@pytest.mark.model
def test_sessions_beyond_the_budget_are_evicted_least_recently_used_first(backend):
    before = counters(backend)
    text, _, _ = ask(backend, A, session="s-old")
    ask(backend, B, session="s-mid")
    ask(backend, B, session="s-new")  # the module's backend keeps 2 sessions: s-old goes
    after = counters(backend)
    assert cached_tokens(backend, "s-old") is None
    assert after["evictions"] >= before["evictions"] + 1 and after["entries"] == 2
    assert 0 < after["bytes"] <= after["budget_bytes"]

    ask(backend, (Message("user", "Say something else entirely."),))
    second = turn(A, text, "Which of them is the largest?")
    _, stats, evaluated = ask(backend, second, session="s-old")
    assert counters(backend)["misses"] == after["misses"] + 1
    assert evaluated > stats.prompt_tokens / 2  # nothing of its history was kept


def test_the_session_reaches_the_answering_backend_through_the_router(tmp_path):
    async def main():
        backends = [ScriptedBackend(["w"] * 4, model="m", parameters=100) for _ in range(2)]
        peers = await start_mesh(tmp_path, backends)
        try:
            await wait_for(lambda: all(
                sum(1 for m in p.membership_service.view() if m.state == "alive" and m.models) == 2 for p in peers))
            c = Client(peers[0].data.root)
            for _ in range(3):
                await c.aask("hi", max_tokens=2, session="conv-1")
            await c.aask("hi", max_tokens=2)
            await c.aclose()
        finally:
            for p in peers:
                await p.stop()
        sessions = [r.session for b in backends for r in b.requests]
        assert sessions.count("conv-1") == 3 and sessions.count(None) == 1
    run(main())
