"""Shared pieces of the gossip codecs: a limited msgpack unpacker and typed field reads.

Every function here raises ``GossipError`` (never a msgpack or Python error) so the
codecs above it have one failure type to document.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.gossip.errors import GossipError, GossipReason
from mesh.rpc.limits import UNPACK_ERRORS, unpack_bounded


def bad(detail: str) -> GossipError:
    return GossipError(GossipReason.BAD_FIELD, detail)


def unpack(data: bytes, *, max_bytes: int) -> Any:
    """Parse one msgpack object, refusing anything longer than ``max_bytes`` unread.

    The unpacker limits stop a few header bytes from claiming a container or string
    larger than the input could hold (msgpack-ruby's 5-byte-to-4-GB bug).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad("data must be bytes")
    if len(data) > max_bytes:
        raise GossipError(GossipReason.OVERSIZE, f"{len(data)} bytes > {max_bytes}")
    if not data:
        raise GossipError(GossipReason.MALFORMED, "empty")
    try:
        return unpack_bounded(data)
    except UNPACK_ERRORS as e:
        raise GossipError(GossipReason.MALFORMED, f"bad msgpack: {type(e).__name__}") from None


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def get(doc: dict, key: str, typ: type, *, optional: bool = False) -> Any:
    """``doc[key]`` if it has type ``typ`` (a bool is not an int), else ``GossipError``.

    With ``optional``, a missing key (or nil) reads as ``None``.
    """
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise bad(f"field {key!r} must be {typ.__name__}")
    return value


def uint(value: Any, what: str, *, bits: int = 63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise bad(f"{what} must be an unsigned integer")
    return value


def blob(value: Any, what: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise bad(f"{what} must be bytes")
    if size is not None and len(value) != size:
        raise bad(f"{what} must be {size} bytes")
    if max_size is not None and len(value) > max_size:
        raise bad(f"{what} longer than {max_size} bytes")
    return value


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements, for splicing pre-packed items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")
