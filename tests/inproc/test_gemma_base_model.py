"""Gemma 3 270M, the stronger model set-up installs (mesh.inference.known_models): the
engine loads it, sees more parameters than in the default model (so the escalation
ladder ranks it above SmolLM2-135M), and, its GGUF having no chat template (a base
model), prompts it with a question/answer transcript whose answer ends at its line."""

from __future__ import annotations

import asyncio
import random

import pytest
from llama_cpp import Llama

from mesh.inference.backend import FinalStats, GenerationRequest, TextChunk
from mesh.inference.engine import ChatPrompter
from mesh.inference.known_models import gemma3_270m_path
from mesh.inference.llama import LlamaBackend
from mesh.inference.models import default_model_path

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gemma():
    b = LlamaBackend(gemma3_270m_path(), n_ctx=512, n_threads=2, rng=random.Random(1))
    yield b
    asyncio.run(b.aclose())


async def run(backend, request):
    items = [item async for item in backend.stream(request)]
    *chunks, final = items
    assert isinstance(final, FinalStats) and all(isinstance(c, TextChunk) for c in chunks)
    return "".join(c.text for c in chunks), final


def test_gemma_is_bigger_than_the_default_model(gemma):
    caps = gemma.capabilities
    assert caps.model == "gemma-3-270m" and caps.quantisation == "Q4_K_M"
    # llama.cpp's own counts: 268,098,176 here, 134,515,008 in SmolLM2-135M-Instruct
    assert 250_000_000 < caps.parameters < 300_000_000
    assert caps.tokens_per_s > 0  # the warm-up measured a speed


def test_a_base_model_is_prompted_with_a_transcript():
    llm = Llama(str(gemma3_270m_path()), vocab_only=True, verbose=False)
    try:
        assert not llm.metadata.get("tokenizer.chat_template")
        prompter = ChatPrompter(llm)
        assert prompter.base_model
        ids = prompter.tokens(GenerationRequest.from_prompt("Hello there", system="Be brief."))
        assert ids[0] == llm.token_bos()
        assert llm.detokenize(ids[1:], special=True).decode() == "Be brief.\n\nQuestion: Hello there\nAnswer:"
    finally:
        llm.close()
    smol = Llama(str(default_model_path()), vocab_only=True, verbose=False)
    try:
        assert not ChatPrompter(smol).base_model  # a model with a chat template is prompted through it
    finally:
        smol.close()


def test_its_answer_ends_at_the_end_of_its_line(gemma):
    text, final = asyncio.run(run(gemma, GenerationRequest.from_prompt(
        "What is the capital of France?", max_tokens=32, temperature=0.0, seed=1)))
    # left alone, the base model goes on with "\nQuestion: ..." of its own
    assert "Paris" in text and "\n" not in text and "Question" not in text and text == text.strip()
    assert final.finish_reason == "stop" and final.completion_tokens < 32
    assert 0 < final.confidence < 1


def test_blank_lines_before_the_answer_do_not_end_it(gemma):
    # at temperature 0 the model's first token here is a line break: skipped, then its line
    text, final = asyncio.run(run(gemma, GenerationRequest.from_prompt(
        "Write a haiku about routers.", max_tokens=32, temperature=0.0, seed=1)))
    assert text.strip() and "\n" not in text and text == text.strip()
    assert final.completion_tokens >= 2
