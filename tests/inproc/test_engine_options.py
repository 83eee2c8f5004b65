"""The engine's own checks of request options (issue 17): a request that reaches an
engine without passing an entry peer's checks (another peer's RPC) is refused there with
``InvalidRequest`` before anything is generated, and the engine goes on serving."""

from __future__ import annotations

import threading
import time

import pytest

from mesh.errors import InvalidRequest
from mesh.inference.backend import GenerationRequest
from mesh.inference.model_runner import ModelRunner
from mesh.inference.models import default_model_path
from mesh.inference.output_format import OutputFormat

pytestmark = pytest.mark.model


def run(runner, request):
    out: list[str] = []
    entries: list = []
    outcome = runner.run(request.validate(), admitted_at=time.perf_counter(), stop=threading.Event(),
                         on_text=out.append, on_logprobs=entries.extend)
    return "".join(out), entries, outcome


def test_an_uncompilable_schema_is_refused_in_the_engine_which_keeps_serving():
    runner = ModelRunner(default_model_path(), n_ctx=512, n_threads=1, queue_limit=1)
    try:
        assert set(runner.caps.features) == {"stop", "logprobs", "grammar", "tools", "embed"}
        bad = GenerationRequest.from_prompt("hi", format=OutputFormat("json_schema", '{"type": "foo"}'))
        with pytest.raises(InvalidRequest, match="Unrecognized schema"):
            run(runner, bad)
        text, entries, outcome = run(runner, GenerationRequest.from_prompt(
            "Say hello.", max_tokens=6, temperature=0, seed=1, logprobs=True))
        assert text and len(entries) == outcome.stats.completion_tokens
        assert b"".join(e[0] for e in entries).decode() == text
    finally:
        runner.close()
