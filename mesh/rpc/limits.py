"""Bounds shared by every decoder of network input (envelopes, gossip messages)."""

from __future__ import annotations

from typing import Any

import msgpack

# What msgpack raises for input it cannot decode; decoders map these to their own
# typed "malformed" refusal.
UNPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


def unpack_bounded(data: bytes) -> Any:
    """Unpack msgpack with explicit limits: no string, container or blob may claim more
    than ``data`` could hold, so a 5-byte header cannot make the unpacker reserve
    gigabytes (msgpack-ruby's bug, found by fuzzing). Raises one of ``UNPACK_ERRORS``."""
    n = len(data)
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_str_len=n,
        max_bin_len=n,
        max_array_len=n,  # every element takes at least one byte
        max_map_len=n // 2,
        max_ext_len=0,
    )


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when maps/lists in ``value`` nest deeper than ``limit`` (iterative: a hostile
    document cannot exhaust the Python stack)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v)
    return False
