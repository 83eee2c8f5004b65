"""Mesh answers -> OpenAI response objects: ``chat.completion``, ``text_completion``,
their stream chunks, ``usage``, the model list, and the routing facts (the ``mesh``
field and the ``X-Mesh-*`` headers).

Pure: ids and times are passed in. ``final`` is the ``data`` of the Router's
``mesh.rpc.server.Final`` (``text``, ``peer``, ``model``, ``confidence``, token counts,
timings, ``route``, ``path``, ``escalated``, ``stopped``).
"""

from __future__ import annotations

from typing import Any

from mesh.gossip.view import MemberView
from mesh.http.openai_schema import VIRTUAL_MODEL, ApiCall
from mesh.inference.logprobs import entries_from_wire, openai_content
from mesh.inference.tools import ToolCallParser, parse_answer

MESH_FIELDS = ("peer", "model", "confidence", "min_token_prob", "escalated", "stopped", "tokens_per_s",
               "time_to_first_token_s", "generation_s", "route", "path")


def logprobs_field(call: ApiCall, entries) -> dict[str, Any] | None:
    """A choice's ``logprobs`` (``{"content": [...], "refusal": None}``) when the request
    asked for them, else None (as OpenAI sends it)."""
    if not call.request.logprobs:
        return None
    return {"content": openai_content(entries_from_wire(list(entries or []))), "refusal": None}


def usage(final: dict) -> dict[str, int]:
    p, c = int(final.get("prompt_tokens") or 0), int(final.get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def mesh_field(final: dict, *, names: dict[str, str] | None = None) -> dict[str, Any]:
    """The routing facts of an answer, as the top-level ``mesh`` field. ``names``: peer id
    -> member name, to say who answered in words too."""
    out = {k: final.get(k) for k in MESH_FIELDS if k in final}
    if isinstance(out.get("path"), list):  # each rung's text would repeat the answer: leave it out
        out["path"] = [{k: v for k, v in a.items() if k != "text"} if isinstance(a, dict) else a for a in out["path"]]
    peer = final.get("peer")
    if names and isinstance(peer, str) and peer in names:
        out["peer_name"] = names[peer]
    return out


def route_path_header(final: dict) -> str:
    """Every rung taken, ``peer/model@confidence`` joined by ``,``; peer ids shortened."""
    rungs = []
    for a in final.get("path") or []:
        if not isinstance(a, dict):
            continue
        who = "cloud" if a.get("cloud") else str(a.get("peer") or "none")[:12]
        conf = a.get("confidence")
        rungs.append(f"{who}/{a.get('model') or '-'}@{'-' if conf is None else f'{conf:.3f}'}")
    return ",".join(rungs)


def _header_safe(v: str) -> str:
    # a model or peer name comes from gossip: keep it to printable ASCII on one line
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in v)[:512]


def mesh_headers(final: dict) -> dict[str, str]:
    conf = final.get("confidence")
    return {
        "X-Mesh-Peer": _header_safe(str(final.get("peer", ""))),
        "X-Mesh-Model": _header_safe(str(final.get("model", ""))),
        "X-Mesh-Confidence": "" if conf is None else f"{conf:.4f}",
        "X-Mesh-Escalated": "true" if final.get("escalated") else "false",
        "X-Mesh-Route-Path": _header_safe(route_path_header(final)),
    }


def completion_object(call: ApiCall, final: dict, *, id: str, created: int, names=None) -> dict[str, Any]:
    """The whole answer as one ``chat.completion`` or ``text_completion``."""
    text = final.get("text") or ""
    reason = final.get("finish_reason") or "stop"
    if call.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if call.request.tools is not None:
            text, tc = parse_answer(text)
            if tc is not None:
                message.update(content=None, tool_calls=[{"id": tool_call_id(id), "type": "function", "function": {
                    "name": tc.name, "arguments": tc.arguments}}])
                reason = "tool_calls" if reason == "stop" else reason
        choice = {"index": 0, "message": message,
                  "logprobs": logprobs_field(call, final.get("logprobs")), "finish_reason": reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        obj = "text_completion"
    return {
        "id": id, "object": obj, "created": created, "model": final.get("model") or call.model,
        "system_fingerprint": None, "choices": [choice], "usage": usage(final), "mesh": mesh_field(final, names=names),
    }


def tool_call_id(completion_id: str) -> str:
    """The id of an answer's (one) tool call, from the completion's id."""
    return "call_" + completion_id.split("-", 1)[-1]


def tool_deltas(parser: ToolCallParser, text: str, *, call_id: str, last: bool = False) -> list[dict[str, Any]]:
    """Answer text -> ``chunk`` keywords, through the answer's ``ToolCallParser``:
    ``{"text": ...}`` for plain text, ``{"tool_calls": [...]}`` for a call, as OpenAI
    streams one (the first delta with index, id, type, name and empty arguments, then
    arguments in pieces), which the SDK accumulates."""
    out: list[dict[str, Any]] = []
    for kind, s in parser.feed(text) + (parser.finish() if last else []):
        if kind == "text":
            out.append({"text": s})
        elif kind == "call":
            out.append({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                        "function": {"name": s, "arguments": ""}}]})
        else:
            out.append({"tool_calls": [{"index": 0, "function": {"arguments": s}}]})
    return out


def chunk(call: ApiCall, *, id: str, created: int, model: str, text: str | None = None, first: bool = False,
          finish_reason: str | None = None, mesh: dict | None = None, logprobs=None,
          tool_calls: list | None = None) -> dict[str, Any]:
    """One stream chunk (``chat.completion.chunk``, or ``text_completion`` for
    /v1/completions). The first chat chunk carries the role; the last, the finish reason
    and the ``mesh`` field; a text chunk, the logprobs of its tokens when asked
    (``logprobs``: wire entries); a tool call chunk, ``delta.tool_calls``."""
    if call.kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None or first:
            delta["content"] = text or ""
        if tool_calls is not None:
            delta["tool_calls"] = tool_calls
        lp = logprobs_field(call, logprobs) if logprobs is not None else None
        choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    out: dict[str, Any] = {"id": id, "object": obj, "created": created, "model": model,
                           "system_fingerprint": None, "choices": [choice]}
    if call.include_usage:
        out["usage"] = None  # as OpenAI: null on every chunk but the usage chunk
    if mesh is not None:
        out["mesh"] = mesh
    return out


def usage_chunk(call: ApiCall, final: dict, *, id: str, created: int) -> dict[str, Any]:
    """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
    obj = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
    return {"id": id, "object": obj, "created": created, "model": final.get("model") or call.model,
            "system_fingerprint": None, "choices": [], "usage": usage(final)}


def model_list(view: list[MemberView], *, own: tuple[str, int] | None, cloud: str | None) -> dict[str, Any]:
    """``GET /v1/models``: ``mesh`` (route for me), every model a live (alive or suspect)
    member offers, this peer's own, and the cloud's. Each entry says which members serve it."""
    found: dict[str, dict[str, Any]] = {}

    def add(name: Any, ctx: Any, who: str | None, *, is_cloud: bool = False) -> None:
        if not isinstance(name, str) or not name or len(name) > 128:
            return
        entry = found.setdefault(name, {"peers": [], "context_length": 0, "cloud": False})
        if who and who not in entry["peers"]:
            entry["peers"].append(who)
        if isinstance(ctx, int) and not isinstance(ctx, bool):
            entry["context_length"] = max(entry["context_length"], ctx)
        entry["cloud"] = entry["cloud"] or is_cloud

    for m in view:
        if m.live:
            for model in m.models:
                add(model.name, model.context_length, (m.name or m.peer_id)[:64])
    if own is not None:
        add(own[0], own[1], None)
    if cloud:
        add(cloud, None, None, is_cloud=True)
    data = [{"id": VIRTUAL_MODEL, "object": "model", "created": 0, "owned_by": "mesh",
             "mesh": {"virtual": True, "description": "route for me: the best peer, escalating when not confident"}}]
    for name in sorted(found):
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "cloud" if found[name]["cloud"] else "mesh",
                     "mesh": found[name]})
    return {"object": "list", "data": data}
