"""The pipe between a peer and its engine process: framing and message shapes.

Each frame is a 4-byte big-endian length and a msgpack map; the length is checked
against ``MAX_FRAME_BYTES`` before anything is unpacked, and unpacking is bounded. The
engine is our own child process, but it runs a C library that can fail in any way, so
what comes back is validated like anything else (``EngineProtocolError``).

Peer -> engine (``op``)::

    {"op": "gen", "id": N, "req": <mesh.api.ask_args>}   start request N (one at a time)
    {"op": "embed", "id": N, "req": {"input": [str, ...]}} embed request N's texts (mesh.inference.embedding)
    {"op": "cancel", "id": N}                             stop request N after this token
    {"op": "exit"}                                        free the model and exit 0

Engine -> peer (``t``)::

    {"t": "phase", "phase": "variant"|"loading"|"warming", "detail": str}
    {"t": "ready", "caps": {...Capabilities}, "engine": {variant, threads, system_info, pid}}
    {"t": "fail", "code": "model_error", "msg": str}     cannot serve; exits, never retried
    {"t": "text", "id": N, "s": str, "lp": [...]}         answer text, coalesced; "lp" (when the request
                                                          asked logprobs): its tokens' entries
                                                          (``mesh.inference.logprobs``)
    {"t": "final", "id": N, "stats": {...FinalStats}}
    {"t": "vec", "id": N, "i": first, "v": [bytes, ...]} embedding vectors of inputs first.. (float32 LE)
    {"t": "embedded", "id": N, "n": tokens}               an embedding request done: the tokens it evaluated
    {"t": "error", "id": N, "code": str, "msg": str}      mesh error code (invalid_request ...)
    {"t": "done", "id": N, "n": tokens, "p": tokens, "cache": {...}}
                                                          request N holds the engine no more; it generated n
                                                          tokens and evaluated p prompt tokens; "cache": the
                                                          session cache's counters (``session_cache.stats``)

``req`` carries the request's ``session`` (``mesh.api.ask_args``), so the engine keeps
that conversation's prompt cache. Fields are only ever added; unknown ones are ignored.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack

from mesh.errors import GenerationError
from mesh.inference.backend import Capabilities, FinalStats

MAX_FRAME_BYTES = 4 << 20  # a prompt is at most 256 KiB of text; generous, and bounded
_LEN = struct.Struct(">I")
LEN_BYTES = _LEN.size


class EngineProtocolError(GenerationError):
    """The engine process sent something that is not a valid frame (on the wire:
    ``generation_failed``, its parent's code)."""


def encode(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise EngineProtocolError(f"engine frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a 4-byte header announces, refused past ``MAX_FRAME_BYTES``."""
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME_BYTES:
        raise EngineProtocolError(f"engine frame of {n} bytes announced; the limit is {MAX_FRAME_BYTES}")
    return n


def recv_frame(sock) -> dict[str, Any] | None:
    """The next frame from a blocking socket; None at end of file (or a socket error:
    the other side is gone either way). ``EngineProtocolError`` for a bad frame."""
    header = _recv_exactly(sock, LEN_BYTES)
    if header is None:
        return None
    body = _recv_exactly(sock, frame_length(header))
    return None if body is None else decode(body)


def _recv_exactly(sock, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def decode(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_str_len=MAX_FRAME_BYTES, max_bin_len=MAX_FRAME_BYTES,
            max_array_len=65536, max_map_len=4096,
        )
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as e:
        raise EngineProtocolError(f"undecodable engine frame: {e}") from e
    if not isinstance(msg, dict):
        raise EngineProtocolError("engine frame is not a map")
    return msg


_CAPS_FIELDS = {f.name: f.type for f in dataclasses.fields(Capabilities)}
_STATS_FIELDS = [f.name for f in dataclasses.fields(FinalStats)]


def caps_to_wire(caps: Capabilities) -> dict[str, Any]:
    return dataclasses.asdict(caps)


def caps_from_wire(d: Any) -> Capabilities:
    if not isinstance(d, dict):
        raise EngineProtocolError("capabilities are not a map")
    try:
        caps = Capabilities(**{k: d[k] for k in _CAPS_FIELDS if k in d})
    except TypeError as e:
        raise EngineProtocolError(f"bad capabilities from the engine: {e}") from e
    if not isinstance(caps.model, str) or not isinstance(caps.context_length, int) or not isinstance(caps.extra, dict):
        raise EngineProtocolError("bad capabilities from the engine")
    features = caps.features
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, str) for f in features):
        raise EngineProtocolError("bad capabilities from the engine: features")
    return dataclasses.replace(caps, features=tuple(features))


def stats_to_wire(stats: FinalStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def stats_from_wire(d: Any) -> FinalStats:
    if not isinstance(d, dict) or any(k not in d for k in _STATS_FIELDS):
        raise EngineProtocolError("final stats from the engine lack fields")
    values = {k: d[k] for k in _STATS_FIELDS}
    if not isinstance(values["model"], str) or values["finish_reason"] not in ("stop", "length"):
        raise EngineProtocolError("bad final stats from the engine")
    for k in _STATS_FIELDS:
        if k not in ("model", "finish_reason") and (
            isinstance(values[k], bool) or not isinstance(values[k], (int, float))
        ):
            raise EngineProtocolError(f"final stats field {k!r} is not a number")
    return FinalStats(**values)
