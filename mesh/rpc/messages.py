"""Typed bodies of each envelope kind, with ``to_wire`` / ``from_wire``.

``from_wire`` raises ``EnvelopeRejected(BAD_FIELD)`` for a body of the wrong shape; the
envelope has already been verified, so this guards against bugs and hostile-but-trusted
senders alike. Unknown extra keys are ignored (append-only schemas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.errors import EnvelopeRejected
from mesh.rpc.envelope import ID_BYTES, RejectReason

MAX_METHOD_CHARS = 64
MAX_ERROR_CHARS = 4096


def _bad(detail: str) -> EnvelopeRejected:
    return EnvelopeRejected(RejectReason.BAD_FIELD, detail)


def _get(body: dict, key: str, typ: type, *, optional: bool = False) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _bad(f"body field {key!r} must be {typ.__name__}")
    return value


def _call_id(body: dict, *, allow_empty: bool = False) -> bytes:
    re = _get(body, "re", bytes)
    if len(re) != ID_BYTES and not (allow_empty and re == b""):
        raise _bad("body field 're' must name a 16-byte call id")
    return re


@dataclass(frozen=True)
class Call:
    method: str
    args: dict
    timeout_ms: int | None

    def to_wire(self) -> dict:
        body: dict[str, Any] = {"m": self.method, "a": self.args}
        if self.timeout_ms is not None:
            body["t"] = int(self.timeout_ms)
        return body

    @classmethod
    def from_wire(cls, body: dict) -> "Call":
        method = _get(body, "m", str)
        if not method or len(method) > MAX_METHOD_CHARS:
            raise _bad("method name must be 1..64 characters")
        timeout = _get(body, "t", int, optional=True)
        if timeout is not None and timeout <= 0:
            raise _bad("timeout must be positive")
        return cls(method, _get(body, "a", dict), timeout)


@dataclass(frozen=True)
class Chunk:
    re: bytes
    seq: int
    data: dict

    def to_wire(self) -> dict:
        return {"re": self.re, "seq": self.seq, "d": self.data}

    @classmethod
    def from_wire(cls, body: dict) -> "Chunk":
        return cls(_call_id(body), _get(body, "seq", int), _get(body, "d", dict))


@dataclass(frozen=True)
class Result:
    re: bytes
    data: dict

    def to_wire(self) -> dict:
        return {"re": self.re, "d": self.data}

    @classmethod
    def from_wire(cls, body: dict) -> "Result":
        return cls(_call_id(body), _get(body, "d", dict))


@dataclass(frozen=True)
class Error:
    """A failed call. ``re`` is empty when the error is about the connection, not a call
    (the peer refused the caller's frames: unknown sender, clock skew, version)."""

    re: bytes
    code: str
    message: str

    def to_wire(self) -> dict:
        return {"re": self.re, "c": self.code, "msg": self.message[:MAX_ERROR_CHARS]}

    @classmethod
    def from_wire(cls, body: dict) -> "Error":
        return cls(_call_id(body, allow_empty=True), _get(body, "c", str)[:64], _get(body, "msg", str)[:MAX_ERROR_CHARS])


@dataclass(frozen=True)
class Cancel:
    re: bytes

    def to_wire(self) -> dict:
        return {"re": self.re}

    @classmethod
    def from_wire(cls, body: dict) -> "Cancel":
        return cls(_call_id(body))


REPLY_TYPES = {"chunk": Chunk, "result": Result, "error": Error}
