"""The schema of the peer's own methods (``ask``, ``info``, ``ping``) on the wire.

Shared by the serving side (``mesh.service``) and the calling side (``mesh.client``) so
the two cannot drift. Wire args are validated here into typed requests; anything a
remote caller sends that does not fit is an ``InvalidRequest`` with a clear message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mesh.errors import InvalidRequest
from mesh.inference.backend import FinalStats, GenerationRequest, Message, TextChunk
from mesh.inference.logprobs import entries_from_wire, openai_content
from mesh.inference.output_format import OutputFormat
from mesh.inference.stops import check_stop
from mesh.inference.tools import MAX_CALLS_PER_MESSAGE, ToolCall, Tools

MAX_MESSAGES = 256


ROUTE_KEYS = ("peer", "model", "session", "local_only", "no_escalate", "threshold")


def route_args(**route: Any) -> dict[str, Any]:
    """The ``route`` map of an ``ask``: pins and policy; None values are left out."""
    return {k: v for k, v in route.items() if k in ROUTE_KEYS and v is not None}


def route_from_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate an ``ask``'s ``route`` map into keywords for ``RouteRequest``."""
    raw = args.get("route") or {}
    if not isinstance(raw, dict):
        raise InvalidRequest("route must be a map")
    out: dict[str, Any] = {}
    for key, kind in (("peer", str), ("model", str), ("session", str)):
        v = raw.get(key)
        if v is not None:
            if not isinstance(v, str) or not 0 < len(v) <= 128:
                raise InvalidRequest(f"route.{key} must be a string of 1..128 characters")
            out[{"peer": "pinned_peer", "model": "pinned_model", "session": "session_id"}[key]] = v
    for key in ("local_only", "no_escalate"):
        v = raw.get(key, False)
        if not isinstance(v, bool):
            raise InvalidRequest(f"route.{key} must be true or false")
        out[key] = v
    if "threshold" in raw:
        v = raw["threshold"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise InvalidRequest("route.threshold must be a number in [0, 1]")
        out["threshold"] = float(v)
    return out


def ask_args(request: GenerationRequest) -> dict[str, Any]:
    args: dict[str, Any] = {
        "messages": [_message_to_wire(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.seed is not None:
        args["seed"] = request.seed
    if request.session is not None:
        args["session"] = request.session  # the answering peer keeps this conversation's prompt cache
    if request.model is not None:
        args["model"] = request.model  # which of the answering peer's models
    if request.stop:
        args["stop"] = list(request.stop)
    if request.logprobs:
        args["logprobs"] = True
        args["top_logprobs"] = request.top_logprobs
    if request.format is not None:
        args["format"] = request.format.to_wire()
    if request.tools is not None:
        args["tools"] = request.tools.to_wire()
    return args


def _message_to_wire(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [c.to_wire() for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _message_from_wire(m: Any) -> Message:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise InvalidRequest("each message is a map with string 'role' and 'content'")
    calls = m.get("tool_calls", [])
    if not isinstance(calls, list) or len(calls) > MAX_CALLS_PER_MESSAGE:
        raise InvalidRequest(f"a message's tool_calls must be a list of at most {MAX_CALLS_PER_MESSAGE}")
    call_id = m.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidRequest("a message's tool_call_id must be a string")
    return Message(m["role"], m["content"], tuple(ToolCall.from_wire(c) for c in calls), call_id)


def text_event(chunk: TextChunk) -> dict[str, Any]:
    """A piece of answer text in a stream: ``{"t": text}``, and ``"lp"``: the log-probability
    entries of its tokens (``mesh.inference.logprobs``) when the request asked for them."""
    return {"t": chunk.text, **({"lp": list(chunk.logprobs)} if chunk.logprobs else {})}


def _number(args: dict, key: str, default: float, kind: type) -> Any:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{key} must be a number")
    if kind is int:
        if not isinstance(value, int):
            raise InvalidRequest(f"{key} must be an integer")
        return value
    return float(value)


def request_from_ask_args(args: dict[str, Any]) -> GenerationRequest:
    raw = args.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty list")
    if len(raw) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES} messages")
    messages = [_message_from_wire(m) for m in raw]
    seed = args.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise InvalidRequest("seed must be an integer in 0..2**32-1")
    session = args.get("session")
    if session is not None and not isinstance(session, str):
        raise InvalidRequest("session must be a string")
    model = args.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string")
    logprobs = args.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise InvalidRequest("logprobs must be true or false")
    fmt = args.get("format")
    tools = args.get("tools")
    return GenerationRequest(
        messages=tuple(messages),
        max_tokens=_number(args, "max_tokens", 256, int),
        temperature=_number(args, "temperature", 0.7, float),
        top_p=_number(args, "top_p", 0.95, float),
        seed=seed,
        session=session,
        model=model,
        stop=check_stop(args.get("stop")),
        logprobs=logprobs,
        top_logprobs=_number(args, "top_logprobs", 0, int),
        format=None if fmt is None else OutputFormat.from_wire(fmt),
        tools=None if tools is None else Tools.from_wire(tools),
    ).validate()


@dataclass(frozen=True)
class Answer:
    """A complete answer and who gave it."""

    text: str
    peer: str  # peer id (text form) of the peer that generated it
    model: str
    confidence: float
    min_token_prob: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tokens_per_s: float
    time_to_first_token_s: float
    generation_s: float
    route: dict | None = None  # how the answering peer was chosen (score, runner-up)
    path: list | None = None  # every rung of the escalation ladder taken
    escalated: bool = False
    logprobs: list | None = None  # OpenAI's logprobs.content, when asked (mesh.inference.logprobs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_to_wire(stats: FinalStats, *, peer: str) -> dict[str, Any]:
    return {
        "peer": peer,
        "model": stats.model,
        "confidence": stats.confidence,
        "min_token_prob": stats.min_token_prob,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "finish_reason": stats.finish_reason,
        "tokens_per_s": stats.tokens_per_s,
        "time_to_first_token_s": stats.time_to_first_token_s,
        "generation_s": stats.generation_s,
    }


def answer_from_wire(text: str, final: dict[str, Any]) -> Answer:
    def num(key: str, kind=float):
        v = final.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidRequest(f"peer sent a final without a numeric {key!r}")
        return kind(v)

    def s(key: str) -> str:
        v = final.get(key)
        if not isinstance(v, str):
            raise InvalidRequest(f"peer sent a final without {key!r}")
        return v

    path = final.get("path")
    route = final.get("route")
    lps = final.get("logprobs")
    return Answer(
        logprobs=openai_content(entries_from_wire(lps)) if lps is not None else None,
        text=final["text"] if isinstance(final.get("text"), str) else text,
        route=route if isinstance(route, dict) else None,
        path=path if isinstance(path, list) else None,
        escalated=final.get("escalated") is True,
        peer=s("peer"),
        model=s("model"),
        confidence=num("confidence"),
        min_token_prob=num("min_token_prob"),
        prompt_tokens=num("prompt_tokens", int),
        completion_tokens=num("completion_tokens", int),
        finish_reason=s("finish_reason"),
        tokens_per_s=num("tokens_per_s"),
        time_to_first_token_s=num("time_to_first_token_s"),
        generation_s=num("generation_s"),
    )
