"""The engine process: answers like the in-process backend, survives kill -9 with a
restart, and an engine that cannot start leaves a backend that says why and never loops.

Real engine processes on the default model (no fakes): crashes are real signals, either
``kill -9`` from the test or a real SIGSEGV the engine sends itself at a chosen phase
(``MESH_ENGINE_FAULT``, the engine's fault-injection knob).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from mesh.errors import BackendBusy, GenerationError
from mesh.inference.backend import FinalStats, GenerationRequest, TextChunk
from mesh.inference.engine_backend import EngineBackend
from mesh.inference.models import default_model_path
from mesh.inference.restarts import RestartConfig

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

PROMPT = "Write a long story about a dragon who learns to fly."


def engine(path=None, **kw) -> EngineBackend:
    return EngineBackend(path or default_model_path(), n_ctx=1024, n_threads=2, queue_limit=2,
                         restart=RestartConfig.for_tests(), **kw)


def ask(max_tokens: int, **kw) -> GenerationRequest:
    return GenerationRequest.from_prompt(PROMPT, max_tokens=max_tokens, temperature=0.0, **kw)


async def answer(backend, request) -> tuple[str, FinalStats]:
    text, final = [], None
    async for item in backend.stream(request):
        if isinstance(item, TextChunk):
            text.append(item.text)
        else:
            final = item
    assert final is not None
    return "".join(text), final


def wait_for(cond, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_the_engine_process_answers_as_the_in_process_backend_does():
    from mesh.inference.llama import LlamaBackend

    async def main():
        local = LlamaBackend(default_model_path(), n_ctx=1024, n_threads=2)
        remote = engine()
        await remote.start()
        try:
            st = remote.status()
            assert st.state == "ready" and st.pid and st.pid != os.getpid()
            assert st.engine["variant"] != "sapphirerapids"  # the AMX kernels are never picked by score
            req = ask(24, seed=11)
            a_text, a_final = await answer(local, req)
            b_text, b_final = await answer(remote, req)
            assert a_text == b_text and a_text
            assert (a_final.completion_tokens, a_final.finish_reason) == (b_final.completion_tokens,
                                                                           b_final.finish_reason)
            assert b_final.time_to_first_token_s > 0 and b_final.tokens_per_s > 0
        finally:
            await local.aclose()
            await remote.aclose()
        assert remote.status().pid is None

    asyncio.run(main())


def test_kill_9_mid_answer_fails_that_request_and_the_engine_comes_back():
    async def main():
        b = engine()
        await b.start()
        try:
            first_pid = b.status().pid
            stream = b.stream(ask(400))
            assert isinstance(await stream.__anext__(), TextChunk)
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(GenerationError, match=r"engine process died \(SIGKILL\)"):
                async for _ in stream:
                    pass
            st = b.status()
            assert st.state == "restarting" and "SIGKILL" in st.reason, st
            with pytest.raises(BackendBusy, match="engine restarting"):  # new work goes elsewhere meanwhile
                await answer(b, ask(4))
            await asyncio.to_thread(wait_for, lambda: b.status().state == "ready")
            assert b.status().pid not in (None, first_pid)
            assert (b.status().restarts, b.crashes) == (1, 1)
            text, final = await answer(b, ask(8))
            assert text and final.completion_tokens >= 1
            assert b.running == 0 and b.waiting == 0
        finally:
            await b.aclose()

    asyncio.run(main())


def test_a_model_llama_cpp_cannot_load_leaves_a_failed_engine_that_is_not_restarted(tmp_path):
    # A real GGUF whose header parses (mesh's own file check passes) but whose architecture
    # llama.cpp does not know: only the engine finds out.
    data = default_model_path().read_bytes()
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4 + 8  # value type (u32), string length (u64)
    bad = tmp_path / "Broken-135M.Q4_1.gguf"
    bad.write_bytes(data[:at] + b"zzzzz" + data[at + 5:])

    async def main():
        b = engine(bad)
        await b.start()
        try:
            st = b.status()
            assert st.state == "failed", st
            assert "cannot load the model" in st.reason and "Broken-135M" in st.reason
            with pytest.raises(GenerationError, match="this peer has no model"):
                await answer(b, ask(4))
            await asyncio.sleep(1.5)  # well past the tests' back-off: nothing was restarted
            assert (b.status().restarts, b.crashes, b.status().pid) == (0, 0, None)
        finally:
            await b.aclose()

    asyncio.run(main())


def test_a_file_that_is_no_model_fails_without_starting_an_engine(tmp_path):
    bad = tmp_path / "nothing.gguf"
    bad.write_bytes(b"not a model at all")

    async def main():
        b = engine(bad)
        await b.start()
        st = b.status()
        assert st.state == "failed" and "GGUF" in st.reason
        await b.aclose()

    asyncio.run(main())


def test_an_engine_that_crashes_at_warm_up_every_time_gives_up_and_says_why():
    spawned: list[str] = []

    async def main():
        b = engine(env={**os.environ, "MESH_ENGINE_FAULT": "segv-at:warming"}, on_progress=spawned.append)
        t0 = time.monotonic()
        await b.start()  # returns after the first attempt's outcome
        await asyncio.to_thread(wait_for, lambda: b.status().state == "failed", 60)
        try:
            st = b.status()
            assert st.reason.startswith("the engine crashed 3 times at warm-up: SIGSEGV"), st.reason
            assert b.crashes == 3 and st.restarts == 2
            # back-off 0.2 s then 0.4 s between the three attempts: not a hot loop
            assert time.monotonic() - t0 >= 0.6
            await asyncio.sleep(1.5)
            assert b.crashes == 3 and b.status().pid is None  # and no fourth attempt
            assert sum(1 for m in spawned if m.startswith("warming up")) == 3
        finally:
            await b.aclose()

    asyncio.run(main())


def test_every_call_into_an_in_process_model_comes_from_one_thread(monkeypatch):
    """llama.cpp's OpenMP team is tied to the first thread that computes: loading, warm-up,
    tokenizing and generating must all happen on the backend's worker thread."""
    import llama_cpp.llama_cpp as lib  # the module llama-cpp-python's own classes call through

    from mesh.inference.llama import LlamaBackend

    seen: dict[str, set[int]] = {}
    for name in ("llama_decode", "llama_tokenize", "llama_model_load_from_file", "llama_init_from_model"):
        real = getattr(lib, name)

        def spy(*a, _real=real, _name=name):
            seen.setdefault(_name, set()).add(threading.get_ident())
            return _real(*a)

        monkeypatch.setattr(lib, name, spy)

    async def main():
        b = LlamaBackend(default_model_path(), n_ctx=512, n_threads=2)
        try:
            await answer(b, ask(6))
            await answer(b, ask(6, seed=3))
        finally:
            await b.aclose()

    asyncio.run(main())
    assert set(seen) >= {"llama_decode", "llama_tokenize"}, seen
    threads = set().union(*seen.values())
    assert len(threads) == 1 and threading.get_ident() not in threads, seen
