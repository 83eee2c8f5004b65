"""The OpenAI chat-completions wire format, as pure functions: request body, stream chunks, error bodies.

Source: the OpenAI API reference, "Create chat completion" (``stream``,
``stream_options.include_usage``, ``logprobs`` / ``top_logprobs``) and "The chat
completion chunk object". Servers that speak it (OpenAI, Anthropic's compatible
endpoint, vLLM, Ollama, llama-server, llama_cpp.server) differ in what they fill in, so
parsing is strict about types and lenient about absence:

- A chunk is a JSON object. ``choices`` may be missing or empty (the final usage chunk
  has ``[]``); the choice with ``index`` 0 is the answer (``n`` is always 1 here).
  ``delta.content`` may be missing or null; ``logprobs`` may be missing or null;
  ``usage`` arrives once, usually in a chunk of its own after ``finish_reason``.
- A chunk of the form ``{"error": {...}}`` is the server reporting a failure mid-stream
  (OpenAI and vLLM do this): ``ReportedError``.
- Anything else of the wrong type is ``MalformedChunk`` with the reason; the backend
  turns both into mesh errors naming the server.

Nothing here does I/O or reads the clock; ``ChatStreamState`` is the running state of one
answer, fed one event's ``data`` at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mesh.inference.backend import GenerationRequest, Message
from mesh.inference.confidence import ConfidenceMeter

DONE = "[DONE]"
MAX_MESSAGE_CHARS = 500  # of a server's error message quoted in an exception
# Rule of thumb from OpenAI's token-counting cookbook: a chat message costs its content
# plus about 3 tokens of template, and the reply is primed with about 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


class MalformedChunk(ValueError):
    """A stream event that is not a chat-completion chunk (the message says why)."""


@dataclass(frozen=True)
class ErrorInfo:
    """What a server said about a failure: from an HTTP error body or a mid-stream error chunk."""

    message: str
    type: str = ""
    code: str = ""

    @property
    def is_context_overflow(self) -> bool:
        text = f"{self.code} {self.type} {self.message}".lower()
        return "context_length" in text or "context length" in text or "context window" in text


class ReportedError(Exception):
    """The server sent an error object inside the stream."""

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info
        super().__init__(info.message)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Chunk:
    text: str  # "" when the chunk adds no text (role-only, finish or usage chunks)
    logprobs: tuple[float, ...]  # chosen tokens' log-probabilities, one per token in this chunk
    finish_reason: str | None
    usage: Usage | None


# ---------------------------------------------------------------- requests


def request_body(request: GenerationRequest, *, model: str, logprobs: bool, include_usage: bool) -> dict[str, Any]:
    """The JSON body of a streaming chat-completions request for ``request``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stream": True,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if logprobs:
        # top_logprobs 0: the chosen token's log-probability only, no alternatives.
        body["logprobs"] = True
        body["top_logprobs"] = 0
    return body


def estimate_prompt_tokens(messages: Iterable[Message], *, chars_per_token: float) -> int:
    """A tokenizer-free estimate of a chat prompt's tokens: characters / ``chars_per_token``
    per message, plus the chat template's overhead. About right for English text with
    today's tokenizers at 4.0; used only where the server does not say (see the backend)."""
    total = TOKENS_PER_REPLY
    for m in messages:
        total += TOKENS_PER_MESSAGE + math.ceil(len(m.content) / chars_per_token)
    return total


# ---------------------------------------------------------------- responses


def error_info(body: bytes) -> ErrorInfo:
    """The error a server described in an HTTP error body, whatever its dialect:
    ``{"error": {"message", "type", "code"}}`` (OpenAI, vLLM, llama_cpp.server),
    ``{"error": "..."}`` (Ollama), ``{"detail": ...}`` (FastAPI), ``{"message": ...}``,
    or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return ErrorInfo(_clip(text) or "(empty body)")
    return _error_from_obj(obj) or ErrorInfo(_clip(text))


def _error_from_obj(obj: Any) -> ErrorInfo | None:
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return ErrorInfo(
            _clip(str(err.get("message") or "")) or "(no message)",
            type=_clip(str(err.get("type") or ""), 80),
            code=_clip(str(err.get("code") or ""), 80),
        )
    if isinstance(err, str):
        return ErrorInfo(_clip(err))
    for key in ("detail", "message"):
        if key in obj:
            value = obj[key]
            return ErrorInfo(_clip(value if isinstance(value, str) else json.dumps(value)))
    return None


def parse_chunk(data: str) -> Chunk:
    """One ``data:`` payload of a chat-completions stream (not ``[DONE]``)."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise MalformedChunk(f"an event is not JSON: {_clip(data, 80)!r}") from None
    if not isinstance(obj, dict):
        raise MalformedChunk(f"an event is JSON but not an object: {_clip(data, 80)!r}")
    if "error" in obj and obj["error"] is not None:
        raise ReportedError(_error_from_obj(obj) or ErrorInfo("(no message)"))
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise MalformedChunk("'choices' is not a list")
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
    if choices and choice is None:
        raise MalformedChunk("'choices' has no choice with index 0")
    text, logprobs, finish = "", (), None
    if choice is not None:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise MalformedChunk("'delta' is not an object")
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise MalformedChunk("'delta.content' is not a string")
        text = content or ""
        logprobs = _logprobs(choice.get("logprobs"))
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise MalformedChunk("'finish_reason' is not a string")
    return Chunk(text=text, logprobs=logprobs, finish_reason=finish, usage=_usage(obj.get("usage")))


def _logprobs(obj: Any) -> tuple[float, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, dict):
        raise MalformedChunk("'logprobs' is not an object")
    content = obj.get("content")
    if content is None:
        return ()
    if not isinstance(content, list):
        raise MalformedChunk("'logprobs.content' is not a list")
    out = []
    for entry in content:
        lp = entry.get("logprob") if isinstance(entry, dict) else None
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp):
            raise MalformedChunk("a 'logprobs.content' entry has no numeric 'logprob'")
        out.append(float(lp))
    return tuple(out)


def _usage(obj: Any) -> Usage | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise MalformedChunk("'usage' is not an object")
    values = []
    for key in ("prompt_tokens", "completion_tokens"):
        v = obj.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MalformedChunk(f"'usage.{key}' is not a count")
        values.append(v)
    return Usage(*values)


class ChatStreamState:
    """The answer so far: fed each event's data in order, it returns the text each adds.

    ``done`` is set by ``[DONE]``; data after it is ignored. ``complete`` says whether
    the answer may be taken as whole: a finish reason arrived. ``[DONE]`` alone is not
    enough (llama_cpp.server, abandoning a stream for a newer request, sends ``[DONE]``
    with no finish reason); a finish reason without ``[DONE]`` is (some servers just
    close the stream)."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.meter = ConfidenceMeter()
        self.text_chunks = 0  # chunks that carried text: the token count of last resort

    def take(self, data: str) -> str:
        if self.done:
            return ""
        if data.strip() == DONE:
            self.done = True
            return ""
        chunk = parse_chunk(data)
        for lp in chunk.logprobs:
            self.meter.add(lp)
        if chunk.text:
            self.text_chunks += 1
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        return chunk.text

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None

    def completion_tokens(self, max_tokens: int) -> int:
        """From ``usage`` when the server sent it; else one per chosen-token logprob; else
        one per text chunk (capped at ``max_tokens``: a server may split a token)."""
        if self.usage is not None and self.usage.completion_tokens > 0:
            return self.usage.completion_tokens
        if self.meter.count:
            return self.meter.count
        return min(self.text_chunks, max_tokens)

    def mesh_finish_reason(self) -> str:
        """``"length"`` when the server stopped at max_tokens; everything else
        ("stop", "content_filter", "tool_calls", none given) is ``"stop"``."""
        return "length" if self.finish_reason == "length" else "stop"


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
