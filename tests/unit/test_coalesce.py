"""Merging text chunks that arrive close together (mesh.inference.coalesce)."""

import asyncio

from mesh.inference.backend import FinalStats, GenerationRequest, TextChunk
from mesh.inference.coalesce import coalesce
from mesh.testing import ScriptedBackend

REQ = GenerationRequest.from_prompt("hi", max_tokens=64)
WORDS = ["a", " b", " c", " d", " e", " f"]


async def collect(backend, window_s):
    out = []
    async for item in coalesce(backend.stream(REQ), window_s=window_s):
        out.append(item)
    return out


def texts(items):
    return [i.text for i in items if isinstance(i, TextChunk)]


def test_burst_is_merged_first_token_goes_alone():
    items = asyncio.run(collect(ScriptedBackend(WORDS), window_s=10.0))
    assert texts(items) == ["a", " b c d e f"]
    assert isinstance(items[-1], FinalStats) and items[-1].completion_tokens == 6


def test_slow_tokens_are_not_held():
    items = asyncio.run(collect(ScriptedBackend(WORDS[:3], delay_s=0.06), window_s=0.02))
    assert texts(items) == ["a", " b", " c"]


def test_held_text_leaves_when_the_window_closes_even_without_a_next_token():
    async def main():
        backend = ScriptedBackend(["x", "y", "z"] + ["w"] * 200, delay_s=0.005)
        seen = []
        gen = coalesce(backend.stream(REQ), window_s=0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async for item in gen:
            seen.append((loop.time() - t0, item))
            if len(seen) == 3:
                break
        await gen.aclose()
        return seen, backend

    seen, backend = asyncio.run(main())
    # chunks after the first come about one window apart, each carrying several tokens
    assert len(seen[1][1].text) > 1 and len(seen[2][1].text) > 1
    assert backend.running == 0  # closing the merged stream closed the backend's


def test_window_zero_passes_through():
    items = asyncio.run(collect(ScriptedBackend(WORDS), window_s=0))
    assert texts(items) == WORDS
