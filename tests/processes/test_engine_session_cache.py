"""The session cache across the engine pipe: a session's second turn, after another
conversation, is evaluated in the engine process from where its first turn ended, and
the engine's counters reach the peer's ``status()``."""

from __future__ import annotations

import asyncio

import pytest

from mesh.inference.backend import FinalStats, GenerationRequest, Message
from mesh.inference.engine_backend import EngineBackend
from mesh.inference.models import default_model_path
from mesh.inference.restarts import RestartConfig
from support.conformance import answer_and_evaluated

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


async def answer(backend, messages, session=None) -> tuple[str, FinalStats, int]:
    request = GenerationRequest(messages=tuple(messages), max_tokens=16, temperature=0.0, session=session)
    return await answer_and_evaluated(backend, request)


def test_a_sessions_next_turn_is_evaluated_from_its_cached_context():
    async def main():
        backend = EngineBackend(default_model_path(), n_ctx=1024, n_threads=2, queue_limit=2,
                                restart=RestartConfig.for_tests())
        await backend.start()
        try:
            first = [Message("user", "Name three planets of the solar system.")]
            text, _, _ = await answer(backend, first, session="conv")
            await answer(backend, [Message("user", "What is the capital of France?")])
            second = [*first, Message("assistant", text), Message("user", "Which of them is the largest?")]
            cached, stats, evaluated = await answer(backend, second, session="conv")
            assert evaluated < stats.prompt_tokens / 2
            cache = backend.status().session_cache
            assert cache["hits"] == 1 and cache["entries"] == 1 and cache["bytes"] > 0
            await answer(backend, [Message("user", "What is the capital of France?")])
            full, full_stats, full_evaluated = await answer(backend, second)
            assert full_evaluated > stats.prompt_tokens / 2 and full == cached
        finally:
            await backend.aclose()
    asyncio.run(main())
