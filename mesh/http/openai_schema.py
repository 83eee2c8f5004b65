"""OpenAI request bodies -> a mesh generation and route; mesh errors -> OpenAI errors.

Pure: no sockets, no peer. ``parse_chat`` and ``parse_completion`` take the decoded JSON
body and the names of the models the mesh can reach now, and return an ``ApiCall`` or
raise ``ApiError`` (an HTTP status plus OpenAI's error body ``{"error": {"message",
"type", "param", "code"}}``; ``param`` names the offending field).

Accepted as OpenAI documents them: ``model``, ``messages`` (string content, or a list of
``{"type": "text"}`` parts, joined with newlines), ``max_completion_tokens`` /
``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stream``,
``stream_options.include_usage``, ``n`` (must be 1), ``user`` (ignored), ``stop`` (a
string or up to 4), ``logprobs`` and ``top_logprobs`` (0..20; chat only),
``response_format`` ``text``, ``json_object`` and ``json_schema`` (compiled to a grammar
here, so a schema that cannot be is a 400 before anything is routed), ``tools`` and
``tool_choice`` (chat only; ``mesh.inference.tools``: checked and compiled here too),
assistant messages with ``tool_calls`` (``content`` may be null) and ``tool`` messages
answering one of them. A request that uses stop, logprobs, a JSON format or tools is
routed only to peers whose engine honours them. Refused with a 400 naming the field,
rather than silently answering something else: the legacy ``functions``, tools together
with a JSON ``response_format``, image or audio parts, ``logprobs`` on /v1/completions.
Ignored: fields OpenAI has and the mesh has no use for (penalties, ``logit_bias``,
``metadata``, ``store``, ...) and unknown fields, as OpenAI ignores them.

The mesh extension: an optional top-level ``"mesh": {"peer", "session", "local_only",
"no_escalate", "threshold"}`` (see docs/http.md). ``model`` is a model name from
``GET /v1/models`` (pins the route to it) or ``"mesh"`` (route for me; also the default).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from mesh.api import MAX_MESSAGES, route_from_args
from mesh.errors import BackendBusy, InvalidRequest, MeshError, NoAnswer
from mesh.inference.backend import GenerationRequest, Message
from mesh.inference.logprobs import MAX_TOP
from mesh.inference.output_format import OutputFormat, grammar_text
from mesh.inference.stops import check_stop
from mesh.inference.tools import MAX_CALLS_PER_MESSAGE, ToolCall, Tools, check_history
from mesh.inference.tools import grammar_text as tools_grammar

VIRTUAL_MODEL = "mesh"  # "route for me": no model pin
DEFAULT_MAX_TOKENS = 256
MESH_ROUTE_KEYS = ("peer", "session", "local_only", "no_escalate", "threshold")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def error_for(e: MeshError) -> ApiError:
    """The HTTP answer to a mesh error raised while routing or generating."""
    if isinstance(e, InvalidRequest):
        return bad(str(e))
    if isinstance(e, BackendBusy):
        # Retry-After is added by the shell (it knows nothing better than a short wait)
        return ApiError(429, str(e), type="server_busy", code="busy", headers={"Retry-After": "1"})
    if isinstance(e, NoAnswer):
        return ApiError(503, str(e), type="service_unavailable", code="no_answer")
    return ApiError(502, f"generation failed: {e}", type="api_error", code=getattr(e, "code", "mesh_error"))


@dataclass(frozen=True)
class ApiCall:
    kind: str  # "chat" (chat.completion) or "text" (text_completion)
    model: str  # as the caller named it; VIRTUAL_MODEL when not pinned
    request: GenerationRequest
    route: dict[str, Any] = field(default_factory=dict)  # RouteRequest keywords; pinned_peer unresolved
    stream: bool = False
    include_usage: bool = False


# -- field checks ---------------------------------------------------------------------------


def _number(body: dict, key: str, *, lo: float, hi: float, default: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(f"{key} must be a number, got {type(v).__name__}", key, "invalid_type")
    if not (lo < v if lo_open else lo <= v) or v > hi:
        raise bad(f"{key} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}", key, "invalid_value")
    return float(v)


def _int(body: dict, key: str, *, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, got {type(v).__name__}", key, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"{key} must be in {lo}..{hi}, got {v}", key, "invalid_value")
    return v


def _bool(body: dict, key: str, param: str | None = None) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"{param or key} must be true or false", param or key, "invalid_type")
    return v


def _unsupported(body: dict) -> None:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad("n must be 1: the mesh returns one choice per request", "n", "unsupported_value")
    if body.get("functions") not in (None, []) or body.get("function_call") is not None:
        raise bad("functions and function_call (deprecated by OpenAI) are not supported; use tools",
                  "functions", "unsupported_parameter")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user must be a string", "user", "invalid_type")


def _options(body: dict, kind: str) -> dict[str, Any]:
    """``stop``, ``logprobs`` / ``top_logprobs`` and ``response_format``, as
    ``GenerationRequest`` keywords; a JSON schema is compiled here (400 if it cannot be)."""
    stop = body.get("stop")
    try:
        stops = check_stop(None if stop in ("", []) else stop)
    except InvalidRequest as e:
        raise bad(str(e), "stop", "invalid_value") from None
    if kind == "chat":
        logprobs = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", lo=0, hi=MAX_TOP)
        if top and not logprobs:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    else:  # the legacy completions shape of logprobs (an int, text offsets) is not served
        if body.get("logprobs") not in (None, False, 0):
            raise bad("logprobs are served on /v1/chat/completions only", "logprobs", "unsupported_parameter")
        logprobs, top = False, 0
    try:
        fmt = OutputFormat.from_openai(body.get("response_format"))
        if fmt is not None:
            grammar_text(fmt)
    except InvalidRequest as e:
        raise bad(str(e), "response_format", "invalid_value") from None
    tools = _tools(body, kind)
    if tools is not None and fmt is not None:
        raise bad("tools cannot be combined with a JSON response_format", "response_format", "unsupported_value")
    return {"stop": stops, "logprobs": logprobs, "top_logprobs": top or 0, "format": fmt, "tools": tools}


def _tools(body: dict, kind: str) -> Tools | None:
    """``tools`` and ``tool_choice`` (None: no function may be called); compiled here."""
    if kind != "chat":
        if body.get("tools") not in (None, []):
            raise bad("tools are served on /v1/chat/completions only", "tools", "unsupported_parameter")
        return None
    try:
        tools = Tools.from_openai(body.get("tools"), body.get("tool_choice"))
        if tools is not None:
            tools_grammar(tools)
    except InvalidRequest as e:
        msg = str(e)
        raise bad(msg, "tool_choice" if msg.startswith("tool_choice") else "tools", "invalid_value") from None
    return tools


def _model(body: dict, models: Collection[str]) -> tuple[str, str | None]:
    """(model as named, model pin or None)."""
    v = body.get("model")
    if v is None or v == VIRTUAL_MODEL:
        return VIRTUAL_MODEL, None
    if not isinstance(v, str) or not v:
        raise bad("model must be a model name (see GET /v1/models) or \"mesh\"", "model", "invalid_type")
    by_lower = {m.lower(): m for m in models}
    if v.lower() not in by_lower:
        raise ApiError(404, f"The model `{v}` does not exist or no peer in this mesh serves it now "
                            f"(see GET /v1/models; \"mesh\" routes for you)", param="model", code="model_not_found")
    return v, by_lower[v.lower()]


def _content(v: Any, where: str, role: str) -> str:
    if isinstance(v, str):
        return v
    if v is None and role == "assistant":
        return ""
    if isinstance(v, list):
        parts = []
        for j, p in enumerate(v):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise bad(f"{where}[{j}]: only text parts are supported, got {kind!r}", f"{where}[{j}]",
                          "unsupported_content")
            parts.append(p["text"])
        return "\n".join(parts)
    raise bad(f"{where} must be a string or a list of text parts", where, "invalid_type")


def _messages(body: dict) -> tuple[Message, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise bad("messages must be a list of messages", "messages", "invalid_type")
    if not raw:
        raise bad("messages must not be empty", "messages", "empty_array")
    if len(raw) > MAX_MESSAGES:
        raise bad(f"at most {MAX_MESSAGES} messages", "messages", "array_above_max_length")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where, "invalid_type")
        role = m.get("role")
        if role not in _ROLES:
            raise bad(f"{where}.role {role!r} is not supported; use system, developer, user, assistant or tool",
                      f"{where}.role", "invalid_value")
        out.append(Message(_ROLES[role], _content(m.get("content"), f"{where}.content", role),
                           _tool_calls(m, where, role), _tool_call_id(m, where, role)))
    try:
        check_history(out)
    except InvalidRequest as e:
        raise bad(str(e), "messages", "invalid_value") from None
    return tuple(out)


def _tool_calls(m: dict, where: str, role: str) -> tuple[ToolCall, ...]:
    raw = m.get("tool_calls")
    if raw in (None, []):
        return ()
    if role != "assistant":
        raise bad(f"{where}: only assistant messages carry tool_calls", f"{where}.tool_calls", "invalid_value")
    if not isinstance(raw, list) or len(raw) > MAX_CALLS_PER_MESSAGE:
        raise bad(f"{where}.tool_calls must be a list of at most {MAX_CALLS_PER_MESSAGE} calls",
                  f"{where}.tool_calls", "invalid_type")
    out = []
    for j, c in enumerate(raw):
        w = f"{where}.tool_calls[{j}]"
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or c.get("type", "function") != "function" or not isinstance(c.get("id"), str) \
                or not isinstance(f.get("name"), str) or not isinstance(f.get("arguments", ""), str):
            raise bad(f"{w} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}} "
                      "with string id, name and arguments", w, "invalid_type")
        try:
            out.append(ToolCall(c["id"], f["name"], f.get("arguments", "")).check(w))
        except InvalidRequest as e:
            raise bad(str(e), w, "invalid_value") from None
    return tuple(out)


def _tool_call_id(m: dict, where: str, role: str) -> str | None:
    v = m.get("tool_call_id")
    if role != "tool":
        return None  # OpenAI ignores it elsewhere
    if not isinstance(v, str) or not 0 < len(v) <= 128:
        raise bad(f"{where}: a tool message needs tool_call_id, the id of the call it answers",
                  f"{where}.tool_call_id", "invalid_value")
    return v


def _mesh_route(body: dict) -> dict[str, Any]:
    raw = body.get("mesh")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad("mesh must be an object (see docs/http.md)", "mesh", "invalid_type")
    try:
        return route_from_args({"route": {k: raw[k] for k in MESH_ROUTE_KEYS if k in raw}})
    except InvalidRequest as e:
        raise bad(str(e).replace("route.", "mesh."), "mesh", "invalid_value") from None


def _common(body: Any, kind: str, messages_of, models: Collection[str]) -> ApiCall:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    _unsupported(body)
    options = _options(body, kind)
    model, pin = _model(body, models)
    messages = messages_of(body)
    max_tokens = _int(body, "max_completion_tokens", lo=1, hi=GenerationRequest.MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", lo=1, hi=GenerationRequest.MAX_TOKENS_LIMIT)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad("stream_options must be an object", "stream_options", "invalid_type")
    stream = _bool(body, "stream")
    include_usage = _bool(opts or {}, "include_usage", "stream_options.include_usage")
    route = _mesh_route(body)
    if pin is not None:
        route["pinned_model"] = pin
    try:
        request = GenerationRequest(
            messages=messages,
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=_number(body, "temperature", lo=0, hi=2, default=0.7),
            top_p=_number(body, "top_p", lo=0, hi=1, default=0.95, lo_open=True),
            seed=_int(body, "seed", lo=0, hi=2**32 - 1),
            **options,
        ).validate()
    except InvalidRequest as e:
        raise bad(str(e), "messages" if "prompt" in str(e) or "role" in str(e) else None) from None
    return ApiCall(kind=kind, model=model, request=request, route=route, stream=stream, include_usage=include_usage)


def parse_chat(body: Any, *, models: Collection[str]) -> ApiCall:
    """A ``POST /v1/chat/completions`` body."""
    return _common(body, "chat", _messages, models)


def _prompt(body: dict) -> tuple[Message, ...]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        raise bad("one prompt per request (send a list of one string, or a string)", "prompt", "unsupported_value")
    if not isinstance(p, str):
        raise bad("prompt must be a string (token arrays are not supported)", "prompt", "invalid_type")
    if body.get("echo") not in (None, False):
        raise bad("echo is not supported by this mesh", "echo", "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise bad("best_of must be 1", "best_of", "unsupported_value")
    if body.get("suffix") not in (None, ""):
        raise bad("suffix is not supported by this mesh", "suffix", "unsupported_parameter")
    return (Message("user", p),)


def parse_completion(body: Any, *, models: Collection[str]) -> ApiCall:
    """A ``POST /v1/completions`` body: the prompt is sent as one user message of a
    chat (the mesh's backends are chat models), so the answer is what the model says
    to it, not a raw continuation of the text."""
    return _common(body, "text", _prompt, models)
