"""Embeddings: what is asked (``EmbeddingRequest``), what comes back (``Embeddings``), and
the vector encoding every hop uses.

A vector travels as little-endian float32 bytes (``pack_vector``), from the engine
process to its peer, over RPC between peers, and out of the HTTP API as base64 when the
caller asks ``encoding_format: "base64"`` (exactly OpenAI's encoding: the SDK decodes it
with ``numpy.frombuffer(base64.b64decode(s), dtype="float32")``). Vectors are unit
length (L2-normalised), as OpenAI's are, so a dot product is their cosine similarity.

Bounds (checked by ``EmbeddingRequest.validate`` wherever a request is built from
outside input): at most ``MAX_INPUTS`` inputs and ``MAX_TOTAL_CHARS`` characters in all
(so the request fits one RPC frame), each input a non-empty string. Each input must also
fit the embedding model's context in tokens; the engine checks that (``InvalidRequest``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest

MAX_INPUTS = 2048  # as OpenAI's limit on inputs per request
MAX_TOTAL_CHARS = 192 * 1024  # all inputs together: up to 768 KiB of UTF-8, under the 1 MiB RPC frame
MAX_MODEL_CHARS = 128
EMBED_METHOD = "embed.here"  # the RPC method that embeds with the called peer's own model
CHUNK_BYTES = 256 * 1024  # vectors per RPC chunk: at most this many bytes of them (and at least one vector)


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    model: str | None = None  # which of the answering peer's models (None: its first); the router sets it

    def validate(self) -> "EmbeddingRequest":
        if not isinstance(self.texts, tuple) or not self.texts:
            raise InvalidRequest("input is empty: send a string or a list of 1.."
                                 f"{MAX_INPUTS} non-empty strings")
        if len(self.texts) > MAX_INPUTS:
            raise InvalidRequest(f"input has {len(self.texts)} strings; the limit is {MAX_INPUTS} per request")
        total = 0
        for i, t in enumerate(self.texts):
            if not isinstance(t, str):
                raise InvalidRequest(f"input[{i}] is not a string")
            if not t:
                raise InvalidRequest(f"input[{i}] is an empty string")
            total += len(t)
        if total > MAX_TOTAL_CHARS:
            raise InvalidRequest(f"input is {total} characters in all; the limit is {MAX_TOTAL_CHARS} per request")
        if self.model is not None and (not isinstance(self.model, str) or not 0 < len(self.model) <= MAX_MODEL_CHARS):
            raise InvalidRequest(f"model must be a string of 1..{MAX_MODEL_CHARS} characters")
        return self

    @property
    def longest_chars(self) -> int:
        return max((len(t) for t in self.texts), default=0)

    def to_wire(self) -> dict[str, Any]:
        return {"input": list(self.texts), **({"model": self.model} if self.model is not None else {})}

    @classmethod
    def from_wire(cls, args: Any) -> "EmbeddingRequest":
        if not isinstance(args, dict):
            raise InvalidRequest("embed args must be a map")
        texts = args.get("input")
        if not isinstance(texts, list):
            raise InvalidRequest("input must be a list of strings")
        return cls(tuple(texts), model=args.get("model")).validate()


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in order (each ``pack_vector`` bytes), and who made them."""

    vectors: tuple[bytes, ...]
    model: str
    prompt_tokens: int
    peer: str = ""

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) // 4 if self.vectors else 0

    def floats(self) -> list[list[float]]:
        return [unpack_vector(v) for v in self.vectors]


def normalized(values: Sequence[float]) -> list[float]:
    """``values`` scaled to unit length (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in values))
    return [x / norm for x in values] if norm > 0 else [0.0 for _ in values]


def pack_vector(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes (OpenAI's base64 encoding, before the base64)."""
    return struct.pack(f"<{len(values)}f", *values)


def unpack_vector(data: bytes) -> list[float]:
    if not isinstance(data, (bytes, bytearray)) or len(data) % 4:
        raise ValueError("a vector is a whole number of float32 values")
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def chunked(vectors: Iterable[bytes], *, max_bytes: int = CHUNK_BYTES) -> Iterator[list[bytes]]:
    """Vectors in groups of at most ``max_bytes`` (at least one each): one RPC chunk apiece."""
    group: list[bytes] = []
    size = 0
    for v in vectors:
        if group and size + len(v) > max_bytes:
            yield group
            group, size = [], 0
        group.append(v)
        size += len(v)
    if group:
        yield group


async def collect_embeddings(out, done) -> tuple[list[bytes], int | None]:
    """What a backend's worker posts for one embedding request on ``out`` (an
    ``asyncio.Queue``): lists of vectors, then the token count, then ``done``; an
    exception posted is raised. Returns (vectors, tokens), tokens None if it never came."""
    vectors: list[bytes] = []
    tokens = None
    while (item := await out.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, list):
            vectors += item
        else:
            tokens = item
    return vectors, tokens


def check_vectors(vectors: Sequence[Any], *, count: int) -> tuple[bytes, ...]:
    """Vectors from another process or peer: ``count`` of them, all float32 bytes of one
    non-zero size (``InvalidRequest`` is not right for a peer's fault: ``ValueError``)."""
    if len(vectors) != count:
        raise ValueError(f"{len(vectors)} vectors for {count} inputs")
    sizes = {len(v) if isinstance(v, (bytes, bytearray)) else -1 for v in vectors}
    if len(sizes) != 1 or (size := sizes.pop()) <= 0 or size % 4:
        raise ValueError("vectors are not float32 arrays of one size")
    return tuple(bytes(v) for v in vectors)
