"""``ModelRunner``: one loaded llama.cpp model and everything done with it, from one thread.

Every call into a model (load, warm-up, tokenizing, generating, closing) must come from
the same thread: llama.cpp's OpenMP build ties its thread team to the thread that first
computes, and generation from another thread ran at a third of the speed (27 instead of
79 tokens/s on 2 threads, issue 12). The runner records the thread that built it and
refuses calls from any other with ``RuntimeError`` (a bug, not a user error).

Used by the engine process (``mesh.inference.engine_main``, on its main thread) and by
the in-process ``LlamaBackend`` (on its worker thread).

Prompt cache per session (``mesh.inference.session_cache``): before an unseeded request
of a session, the runner restores that session's saved context when it shares more of
the prompt than the live context does, so only the new part of a conversation is
evaluated even when other conversations came in between; after the request it saves the
context for the session's next turn. Copies cost a few milliseconds per thousand
tokens and happen here, on the owning thread. ``prompt_tokens_evaluated`` counts what
llama.cpp actually evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from mesh.errors import GenerationError, ModelError
from mesh.inference.backend import (
    ENGINE_FEATURES,
    TOOLS,
    Capabilities,
    FinalStats,
    GenerationRequest,
    Message,
    ewma,
)
from mesh.inference.embedder import Embedder
from mesh.inference.engine import (
    ChatPrompter,
    SplitArgs,
    generate_once,
    live_tokens,
    load_llama,
    restore_sequence,
    snapshot_sequence,
)
from mesh.inference.models import model_info
from mesh.inference.output_format import grammar_text
from mesh.inference.session_cache import SessionCache, SessionCacheConfig, SessionState
from mesh.inference.slots import check_fits
from mesh.inference.tools import grammar_text as tools_grammar
from mesh.inference.tools import prompt_messages

log = logging.getLogger(__name__)

WARMUP_PROMPT = "Say hello."


@dataclass(frozen=True)
class RunOutcome:
    """What one request produced: its stats, or ``None`` when it was stopped."""

    stats: FinalStats | None
    prompt_tokens: int
    generated: int = 0  # tokens generated, a stopped request's included
    prompt_evaluated: int = 0  # prompt tokens llama.cpp evaluated (the rest were reused from a cache)


class ModelRunner:
    """Load ``path`` and serve generations from the calling thread only."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        queue_limit: int,
        session_cache: SessionCacheConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
        split: SplitArgs | None = None,
    ) -> None:
        """``split``: part of the model on other peers' memory (issue 16)."""
        self._owner = threading.get_ident()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.sessions = SessionCache(session_cache)
        self.prompt_tokens_evaluated = 0  # since construction, the warm-up excluded
        self._llm = load_llama(path, n_ctx=n_ctx, n_threads=n_threads, split=split)
        try:
            self._prompter = ChatPrompter(self._llm)
            info = model_info(self._llm.metadata, path, n_params=llama_cpp.llama_model_n_params(self._llm.model))
        except BaseException:
            self._llm.close()
            raise
        self.caps = Capabilities(
            model=info.name,
            parameters=info.parameters,
            quantisation=info.quantisation,
            context_length=self._llm.n_ctx(),
            tokens_per_s=0.0,
            parallel=1,
            queue_limit=queue_limit,
            extra={"engine": "llama.cpp", "trained_context_length": info.context_length, "n_threads": n_threads},
            features=ENGINE_FEATURES,
        )
        # opened on the first embedding only (mesh.inference.embedder): no cost until then
        self.embedder = Embedder(path, metadata=dict(self._llm.metadata), n_threads=n_threads)

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("a ModelRunner is used from a thread other than the one that loaded it")

    def warm_up(self, n_tokens: int) -> float:
        """Generate ``n_tokens`` once (first-call costs paid here); returns decode tokens/s."""
        self._check_thread()
        prompt = self._prompter.tokens(GenerationRequest.from_prompt(WARMUP_PROMPT))
        try:
            gen = generate_once(
                self._llm, prompt, max_tokens=n_tokens, temperature=0.0, seed=0, reuse_cache=False, clock=self._clock
            )  # without a base model's line-break end: the warm-up measures decode speed
        except GenerationError as e:
            raise ModelError(f"the model loaded but could not generate: {e}") from e
        self.caps = _with_tps(self.caps, gen.decode_tokens_per_s, first=True)
        return gen.decode_tokens_per_s

    def run(
        self,
        request: GenerationRequest,
        *,
        admitted_at: float,
        stop: threading.Event,
        on_text: Callable[[str], None],
        on_logprobs: Callable[[list], None] | None = None,
    ) -> RunOutcome:
        """Tokenize, check the context fits, restore the session's context if that
        helps, generate, save the session's context. ``InvalidRequest`` for a prompt
        that does not fit (or a format whose grammar cannot be built), ``GenerationError``
        when llama.cpp fails. A stopped request returns ``stats=None``. With
        ``request.logprobs``, entries go to ``on_logprobs`` before their text."""
        self._check_thread()
        grammar = grammar_text(request.format) if request.format is not None else None
        if request.tools is not None:
            grammar = tools_grammar(request.tools)
        prompt = self._prompter.tokens(_plain_turns(request))
        check_fits(len(prompt), request.max_tokens, self.caps.context_length)
        seed = request.seed if request.seed is not None else self._rng.randrange(0, 0xFFFFFFFF)
        session = request.session if self.sessions.config.enabled else None
        if session is not None and request.seed is None:
            plan = self.sessions.plan(session, prompt, live_tokens(self._llm))
            if plan.restore is not None:
                try:
                    restore_sequence(self._llm, plan.restore.tokens, plan.restore.data, keep=plan.keep)
                except GenerationError as e:  # the context is empty now: the prompt is evaluated in full
                    log.warning("session cache: %s; evaluating the prompt in full", e)
                    self.sessions.forget(session)
        gen = generate_once(
            self._llm,
            prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
            reuse_cache=request.seed is None,
            stop=stop,
            on_text=on_text,
            clock=self._clock,
            ends_at_line_break=self._prompter.base_model,
            stops=request.stop,
            top_logprobs=request.top_logprobs if request.logprobs else None,
            on_logprobs=on_logprobs,
            grammar=grammar,
        )
        self.prompt_tokens_evaluated += gen.prompt_evaluated
        if gen.finish_reason == "cancelled":
            return RunOutcome(None, len(prompt), len(gen.token_ids), gen.prompt_evaluated)
        if session is not None:
            self._save(session)
        end = gen.last_token_at if gen.last_token_at is not None else self._clock()
        first = gen.first_token_at if gen.first_token_at is not None else end
        tps = gen.decode_tokens_per_s
        self.caps = _with_tps(self.caps, tps)
        stats = FinalStats(
            model=self.caps.model,
            prompt_tokens=len(prompt),
            completion_tokens=len(gen.token_ids),
            confidence=gen.confidence,
            min_token_prob=gen.min_token_prob,
            finish_reason=gen.finish_reason,
            time_to_first_token_s=max(0.0, first - admitted_at),
            generation_s=max(0.0, end - admitted_at),
            tokens_per_s=tps,
        )
        return RunOutcome(stats, len(prompt), len(gen.token_ids), gen.prompt_evaluated)

    def embed(self, texts, *, stop: threading.Event, on_vectors) -> int | None:
        """Embed ``texts`` with this model (``Embedder.embed``): the tokens evaluated, or
        None when stopped."""
        self._check_thread()
        return self.embedder.embed(texts, stop=stop, on_vectors=on_vectors)

    def idle(self) -> None:
        """Called when no request has come for a while: free what is unused."""
        self._check_thread()
        self.embedder.close_if_idle()

    def _save(self, session: str) -> None:
        """Keep the context for the session's next turn; the answer stands if this fails."""
        try:
            tokens, data = snapshot_sequence(self._llm)
        except (GenerationError, MemoryError) as e:
            log.warning("session cache: could not save the context: %s", e)
            self.sessions.forget(session)
            return
        self.sessions.put(session, SessionState(tokens, data, len(data)))

    def close(self) -> None:
        self._check_thread()
        self.embedder.close()
        self._llm.close()


def _plain_turns(request: GenerationRequest) -> GenerationRequest:
    """Tools and an earlier turn's calls and results as plain chat turns (no chat template
    the mesh ships speaks tools: ``mesh.inference.tools.prompt_messages``)."""
    if TOOLS not in request.needs:
        return request
    return dataclasses.replace(request, messages=prompt_messages(request.messages, request.tools, Message))


def _with_tps(caps: Capabilities, tps: float, *, first: bool = False) -> Capabilities:
    if tps <= 0:
        return caps
    return dataclasses.replace(caps, tokens_per_s=tps if first else ewma(caps.tokens_per_s, tps))
