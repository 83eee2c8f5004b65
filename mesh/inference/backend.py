"""The Backend interface: what the peer (and later the Router) calls to generate text.

A backend turns a ``GenerationRequest`` into an async stream of ``TextChunk`` items
followed by exactly one ``FinalStats``. It knows nothing of the mesh. Backends:

- ``mesh.inference.llama.LlamaBackend``: llama.cpp in-process, in a worker thread.
- ``mesh.inference.openai_backend.OpenAIBackend``: any OpenAI-compatible chat
  completions endpoint (a cloud provider, or Ollama / vLLM / llama-server as a peer's
  engine), over HTTP.
- ``mesh.testing.ScriptedBackend``: the in-memory twin used by fast tests.

Contract (checked by ``tests/test_backend_conformance.py`` against every backend):

- ``stream(request)`` is an async generator. It raises ``BackendBusy`` at the first
  ``__anext__`` when the backend's bounded queue is full, ``InvalidRequest`` for a
  request it cannot serve, ``GenerationError`` if the engine fails.
- Closing the generator early (``aclose()``, or cancelling the task iterating it) stops
  generation promptly and frees the slot; nothing keeps running for an absent caller.
- The last item is a ``FinalStats`` with ``finish_reason`` in {"stop", "length"}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mesh.errors import InvalidRequest
from mesh.inference.logprobs import MAX_TOP
from mesh.inference.output_format import OutputFormat
from mesh.inference.stops import check_stop
from mesh.inference.tools import ToolCall, Tools, check_history, uses_tools

ROLES = ("system", "user", "assistant", "tool")  # "tool": a function's result (mesh.inference.tools)
# Request options an engine may honour beyond plain sampling. A backend lists those it
# honours in ``Capabilities.features``; gossip carries them per model, and the router
# sends a request only where every option it uses is honoured (``GenerationRequest.needs``).
STOP, LOGPROBS, GRAMMAR, TOOLS = "stop", "logprobs", "grammar", "tools"
# Not a request option but what a model can do: make embeddings (POST /v1/embeddings,
# mesh.inference.embedding); an embedding is routed only to a model that offers it.
EMBED = "embed"
# the llama.cpp engine honours every option, and any llama.cpp model embeds (mesh.inference.embedder)
ENGINE_FEATURES = (STOP, LOGPROBS, GRAMMAR, TOOLS, EMBED)
TPS_EWMA_ALPHA = 0.2  # weight of the newest request in Capabilities.tokens_per_s


def ewma(previous: float, sample: float, alpha: float = TPS_EWMA_ALPHA) -> float:
    """Exponentially weighted moving average; the first sample (previous <= 0) is taken as is."""
    return sample if previous <= 0 else alpha * sample + (1 - alpha) * previous


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's function calls
    tool_call_id: str | None = None  # a "tool" turn: the call whose result it is


@dataclass(frozen=True)
class GenerationRequest:
    """One chat generation. Limits are checked by ``validate()``, not by the engine."""

    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    session: str | None = None  # the conversation it belongs to: its peer keeps its prompt cache
    model: str | None = None  # which of the answering peer's models (None: its first); the router sets it
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (mesh.inference.stops)
    logprobs: bool = False  # report each answer token's log-probability (mesh.inference.logprobs)
    top_logprobs: int = 0  # and the most likely alternatives at each step (logprobs only)
    format: OutputFormat | None = None  # JSON output under a grammar (mesh.inference.output_format)
    tools: Tools | None = None  # functions the answer may call (mesh.inference.tools)

    MAX_TOKENS_LIMIT = 8192
    MAX_PROMPT_CHARS = 256 * 1024
    MAX_SESSION_CHARS = 128  # as mesh.routing.request.MAX_SESSION_ID_CHARS

    def validate(self) -> "GenerationRequest":
        if not self.messages:
            raise InvalidRequest("request has no messages")
        total = 0
        for m in self.messages:
            if m.role not in ROLES:
                raise InvalidRequest(f"unknown message role {m.role!r}; use one of {', '.join(ROLES)}")
            if not isinstance(m.content, str):
                raise InvalidRequest("message content must be a string")
            total += len(m.content) + sum(len(c.arguments) for c in m.tool_calls)
        if not any(m.role == "user" and m.content.strip() for m in self.messages):
            raise InvalidRequest("the prompt is empty")
        if total > self.MAX_PROMPT_CHARS:
            raise InvalidRequest(f"prompt is {total} characters; the limit is {self.MAX_PROMPT_CHARS}")
        if not (1 <= self.max_tokens <= self.MAX_TOKENS_LIMIT):
            raise InvalidRequest(f"max_tokens must be in 1..{self.MAX_TOKENS_LIMIT}, got {self.max_tokens}")
        if not (0.0 <= self.temperature <= 2.0):
            raise InvalidRequest(f"temperature must be in 0..2, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.session is not None and (
            not isinstance(self.session, str) or not 0 < len(self.session) <= self.MAX_SESSION_CHARS
        ):
            raise InvalidRequest(f"session must be a string of 1..{self.MAX_SESSION_CHARS} characters")
        if self.model is not None and (not isinstance(self.model, str) or not 0 < len(self.model) <= 128):
            raise InvalidRequest("model must be a string of 1..128 characters")
        if check_stop(self.stop) != tuple(self.stop):
            raise InvalidRequest("stop sequences must be distinct")
        if not isinstance(self.logprobs, bool):
            raise InvalidRequest("logprobs must be true or false")
        if isinstance(self.top_logprobs, bool) or not isinstance(self.top_logprobs, int) or not (
            0 <= self.top_logprobs <= MAX_TOP
        ):
            raise InvalidRequest(f"top_logprobs must be an integer in 0..{MAX_TOP}")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true")
        if self.format is not None:
            if not isinstance(self.format, OutputFormat):
                raise InvalidRequest("format must be an OutputFormat")
            self.format.check()
        if self.tools is not None:
            if not isinstance(self.tools, Tools):
                raise InvalidRequest("tools must be a Tools")
            if self.format is not None:
                raise InvalidRequest("a request offers tools or asks a JSON format, not both")
            self.tools.check()
        check_history(self.messages)
        return self

    @property
    def needs(self) -> frozenset[str]:
        """The features a backend must honour to serve this request (``ENGINE_FEATURES``)."""
        return frozenset(name for name, used in ((STOP, self.stop), (LOGPROBS, self.logprobs),
                                                 (GRAMMAR, self.format is not None),
                                                 (TOOLS, self.tools is not None or uses_tools(self.messages)))
                         if used)

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw) -> "GenerationRequest":
        msgs = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        return cls(messages=tuple(msgs), **kw)


@dataclass(frozen=True)
class TextChunk:
    text: str
    logprobs: tuple = ()  # wire entries of the tokens this text carries (mesh.inference.logprobs)


@dataclass(frozen=True)
class FinalStats:
    model: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float  # geometric mean of chosen-token probabilities, in [0, 1]
    min_token_prob: float  # the least likely chosen token's probability, in [0, 1]
    finish_reason: str  # "stop" | "length"
    time_to_first_token_s: float
    generation_s: float  # from request start to last token
    tokens_per_s: float  # completion tokens / decode time


@dataclass(frozen=True)
class Capabilities:
    model: str  # short model name, e.g. "SmolLM2-135M-Instruct"
    parameters: int  # parameter count (0 when unknown)
    quantisation: str  # e.g. "Q4_1" ("" when unknown)
    context_length: int  # tokens
    tokens_per_s: float  # measured on this machine (0.0 until measured)
    parallel: int = 1  # generations run at once
    queue_limit: int = 8  # requests that may wait beyond `parallel` before "busy"
    extra: dict = field(default_factory=dict)
    features: tuple[str, ...] = ()  # the request options it honours (ENGINE_FEATURES)


@dataclass(frozen=True)
class Load:
    running: int  # generations under way
    waiting: int  # requests queued behind them


@dataclass(frozen=True)
class EngineStatus:
    """Whether a backend can answer now, and if not, why (shown by status, peers, doctor).

    ``state``: "ready"; "starting" (first load); "restarting" (its engine died and comes
    back after a back-off); "failed" (it will not come back by itself: ``reason`` says
    why and what to do); "off" (a peer started with ``--no-model``).
    """

    state: str = "ready"
    reason: str = ""
    restarts: int = 0
    pid: int | None = None  # the engine process, when it runs in one
    engine: dict = field(default_factory=dict)  # CPU variant, threads, build (engine processes)
    session_cache: dict = field(default_factory=dict)  # mesh.inference.session_cache counters ({} without one)

    @property
    def serving(self) -> bool:
        return self.state == "ready"

    def to_wire(self) -> dict:
        """The short form gossip carries (the reason bounded)."""
        return {"state": self.state, "reason": self.reason[:300], "restarts": self.restarts}


READY = EngineStatus()


@runtime_checkable
class Backend(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    def load(self) -> Load: ...

    def status(self) -> EngineStatus: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]: ...

    async def aclose(self) -> None: ...
