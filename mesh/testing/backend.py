"""``ScriptedBackend``: the in-memory twin of a Backend, for fast RPC, peer and router tests.

It keeps the same contract as ``LlamaBackend`` (checked by the same conformance suite,
``tests/test_backend_conformance.py``) without a model or a thread:

- ``stream()`` yields the scripted tokens as ``TextChunk`` items, one token per chunk,
  then exactly one ``FinalStats``; ``finish_reason`` is "length" when the script is
  longer than ``max_tokens`` (it is cut there), else "stop".
- ``parallel`` generations run at once; up to ``queue_limit`` more wait in FIFO order;
  beyond that ``stream()`` raises ``BackendBusy`` at its first ``__anext__``.
- Closing a stream early or cancelling its consumer frees its slot before the stream's
  ``finally`` returns; a request cancelled while waiting never runs.
- ``InvalidRequest`` for what ``GenerationRequest.validate()`` refuses, and when prompt
  + ``max_tokens`` exceed ``context_length`` (prompt tokens = whitespace-separated words
  of all messages, a stand-in for a tokenizer).
- ``aclose()`` refuses new work (``Cancelled``), fails waiting requests with
  ``Cancelled``, and stops running ones with ``Cancelled`` at their next token.

Knobs for tests: the reply (fixed ``tokens`` or a ``reply`` function of the request),
``delay_s`` between tokens (through the injected ``sleep``), the reported
``confidence`` / ``min_token_prob``, and ``fail_after`` to make the engine fail with
``GenerationError`` after that many tokens. ``requests`` lists the requests that began
generating, in order; ``running``, ``waiting`` and ``started_count`` show the load.

Example::

    backend = ScriptedBackend(["Paris", " is", " the", " capital", "."], confidence=0.4)
    async for item in backend.stream(GenerationRequest.from_prompt("Capital of France?")):
        ...
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from mesh.errors import Cancelled, GenerationError
from mesh.inference.backend import (
    READY,
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    TextChunk,
)
from mesh.inference.slots import SlotQueue, check_fits

DEFAULT_SCRIPT = ("Hello", "!", " This", " is", " a", " scripted", " answer", " from", " the", " test", " backend", ".")
_WORDS = re.compile(r"\s*\S+")


def split_tokens(text: str) -> list[str]:
    """Split a reply into word-sized tokens that join back to ``text`` exactly."""
    parts = _WORDS.findall(text)
    rest = text[sum(map(len, parts)) :]
    if rest:  # trailing whitespace
        parts.append(rest)
    return parts


class ScriptedBackend:
    def __init__(
        self,
        tokens: Sequence[str] | None = None,
        *,
        reply: Callable[[GenerationRequest], str | Sequence[str]] | None = None,
        delay_s: float = 0.0,
        confidence: float = 0.9,
        min_token_prob: float | None = None,
        model: str = "scripted",
        parameters: int = 0,
        parallel: int = 1,
        queue_limit: int = 8,
        context_length: int = 2048,
        tokens_per_s: float = 1000.0,
        fail_after: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        features: Sequence[str] = (),
    ) -> None:
        """``features``: the request options it declares (``Capabilities.features``), so
        routing tests can tell peers apart; it applies none of them."""
        if tokens is not None and reply is not None:
            raise ValueError("give tokens or reply, not both")
        if not (0.0 <= confidence <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        min_prob = confidence if min_token_prob is None else min_token_prob
        if not (0.0 <= min_prob <= confidence):
            raise ValueError(f"min_token_prob must be in [0, confidence], got {min_prob}")
        if parallel < 1 or queue_limit < 0:
            raise ValueError("parallel must be >= 1 and queue_limit >= 0")
        self._script = tuple(tokens) if tokens is not None else DEFAULT_SCRIPT
        self._reply = reply
        self._delay_s = delay_s
        self._confidence = confidence
        self._min_prob = min_prob
        self._fail_after = fail_after
        self._clock = clock
        self._sleep = sleep
        self._caps = Capabilities(
            model=model,
            parameters=parameters,
            quantisation="",
            context_length=context_length,
            tokens_per_s=tokens_per_s,
            parallel=parallel,
            queue_limit=queue_limit,
            extra={"engine": "scripted"},
            features=tuple(features),
        )
        self._slots = SlotQueue(parallel=parallel, queue_limit=queue_limit)
        self._closed = False
        self.requests: list[GenerationRequest] = []

    # -- Backend protocol

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        request.validate()
        started_at = self._clock()
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        check_fits(prompt_tokens, request.max_tokens, self._caps.context_length)
        await self._acquire()
        try:
            self.requests.append(request)
            script = self._script_for(request)
            cut = script[: request.max_tokens]
            first_at = None
            for i, token in enumerate(cut):
                await self._sleep(self._delay_s)
                if self._closed:
                    raise Cancelled("the backend closed while generating this answer")
                if self._fail_after is not None and i >= self._fail_after:
                    raise GenerationError(f"scripted engine failure after {i} tokens")
                first_at = self._clock() if first_at is None else first_at
                yield TextChunk(token)
            end = self._clock()
            first_at = end if first_at is None else first_at
            decode_s = end - first_at
            yield FinalStats(
                model=self._caps.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(cut),
                confidence=self._confidence,
                min_token_prob=self._min_prob,
                finish_reason="length" if len(script) > request.max_tokens else "stop",
                time_to_first_token_s=first_at - started_at,
                generation_s=end - started_at,
                tokens_per_s=(len(cut) - 1) / decode_s if len(cut) > 1 and decode_s > 0 else 0.0,
            )
        finally:
            self._release()

    async def aclose(self) -> None:
        self._closed = True
        self._slots.close()

    # -- load

    def status(self) -> EngineStatus:
        return READY

    def load(self) -> Load:
        return Load(running=self.running, waiting=self.waiting)

    @property
    def running(self) -> int:
        return self._slots.running

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    @property
    def started_count(self) -> int:
        return len(self.requests)

    # -- internals

    def _script_for(self, request: GenerationRequest) -> tuple[str, ...]:
        if self._reply is None:
            return self._script
        out = self._reply(request)
        return tuple(split_tokens(out)) if isinstance(out, str) else tuple(out)

    async def _acquire(self) -> None:
        await self._slots.acquire()

    def _release(self) -> None:
        self._slots.release()
