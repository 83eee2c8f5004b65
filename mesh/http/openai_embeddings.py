"""``POST /v1/embeddings``: OpenAI's embeddings API on every peer (see docs/http.md).

``parse_embeddings`` (pure) checks the body; ``embedding_response`` (pure) shapes the
answer as OpenAI does; ``embeddings`` is the handler: admission as for chat (key, rate
limit, body size), then routed through the mesh to a model that can embed
(``mesh.routing.embed_router``).

Accepted: ``input`` (a string or a list of 1..2048 non-empty strings, 192 KiB of text in
all), ``model`` (a name from ``GET /v1/models`` pins it; ``"mesh"`` or absent: the mesh
chooses, and the answer's ``model`` says which), ``encoding_format`` ``"float"`` (the
default) or ``"base64"`` (little-endian float32 bytes, as OpenAI encodes them),
``dimensions`` (only the model's own size: vectors are never cut), ``user`` (ignored),
and the ``mesh`` extension's ``peer``. Token arrays as input are refused with a 400:
token ids are the caller's tokenizer's, not the answering model's.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh.errors import InvalidRequest, MeshError
from mesh.http.openai_format import _header_safe
from mesh.http.openai_schema import ApiError, _mesh_route, _model, bad, error_for
from mesh.inference.embedding import MAX_INPUTS, EmbeddingRequest, Embeddings

if TYPE_CHECKING:
    from mesh.http.openai_api import OpenAIApi

ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingCall:
    request: EmbeddingRequest
    pinned_model: str | None
    encoding_format: str = "float"
    dimensions: int | None = None
    pinned_peer: str | None = None


def parse_embeddings(body: Any, *, models: Collection[str]) -> EmbeddingCall:
    """The body of ``POST /v1/embeddings`` -> an ``EmbeddingCall``, or ``ApiError``."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    if "input" not in body:
        raise bad("input is required: a string or a list of strings", "input", "missing_required_parameter")
    raw = body["input"]
    if isinstance(raw, str):
        texts: tuple = (raw,)
    elif isinstance(raw, list):
        if raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw) or any(
                isinstance(x, list) for x in raw):
            raise bad("token arrays are not accepted as input: send the text (each peer's model has its own "
                      "tokenizer)", "input", "invalid_type")
        if len(raw) > MAX_INPUTS:  # before looking at each one: a huge list is refused at once
            raise bad(f"input has {len(raw)} strings; the limit is {MAX_INPUTS} per request", "input",
                      "too_many_inputs")
        texts = tuple(raw)
    else:
        raise bad("input must be a string or a list of strings", "input", "invalid_type")
    _, pin = _model(body, models)
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ENCODINGS:
        raise bad(f"encoding_format must be one of {', '.join(ENCODINGS)}", "encoding_format", "invalid_value")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise bad("dimensions must be a positive integer", "dimensions", "invalid_type")
    route = _mesh_route(body)
    try:
        request = EmbeddingRequest(texts).validate()
    except InvalidRequest as e:
        raise bad(str(e), "input", "invalid_input") from None
    return EmbeddingCall(request, pin, fmt, dims, route.get("pinned_peer"))


def check_dimensions(call: EmbeddingCall, out: Embeddings) -> None:
    """``dimensions`` must be the model's own size (vectors are never shortened)."""
    if call.dimensions is not None and call.dimensions != out.dimensions:
        raise bad(f"dimensions {call.dimensions} is not available: model {out.model} makes "
                  f"{out.dimensions}-dimensional embeddings and they are not shortened; leave dimensions out "
                  f"or send {out.dimensions}", "dimensions", "invalid_value")


def embedding_response(call: EmbeddingCall, out: Embeddings) -> dict[str, Any]:
    """OpenAI's shape: ``{"object": "list", "data": [...], "model", "usage"}``."""
    if call.encoding_format == "base64":
        values: list = [base64.b64encode(v).decode("ascii") for v in out.vectors]
    else:
        values = out.floats()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)],
        "model": out.model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }


async def embeddings(api: OpenAIApi, request: web.Request) -> web.Response:
    from mesh.routing.embed_router import embed_through, route_for_embedding

    api.admit(request)
    call = parse_embeddings(await api.read_json(request), models=api.model_names())
    router = api.peer.router
    if router is None:
        raise ApiError(503, "this peer is still starting", type="service_unavailable", code="not_ready")
    try:
        peer = router.resolve_peer(call.pinned_peer) if call.pinned_peer else None
        route = route_for_embedding(call.request, pinned_model=call.pinned_model, pinned_peer=peer)
    except InvalidRequest as e:
        raise bad(str(e).replace("--peer", "mesh.peer"), "mesh") from None
    try:
        out = await embed_through(router, call.request, route)
    except MeshError as e:
        raise error_for(e) from None
    check_dimensions(call, out)
    api.answers["embeddings"] += 1
    return web.json_response(embedding_response(call, out), headers={
        "X-Mesh-Peer": _header_safe(out.peer), "X-Mesh-Model": _header_safe(out.model)})
