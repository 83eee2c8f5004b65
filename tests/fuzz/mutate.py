"""Mutators for the decoder fuzzers: byte-level and msgpack-level, driven by a ``Random``.

Shared by the hypothesis tests (which hand in a shrinkable ``st.randoms()``) and the
atheris run (which seeds a ``Random`` from its input), so both explore the same space:

* bytes: bit flips, truncation, insertion, deletion, duplication, splicing two seeds,
  and overwriting with msgpack headers that declare huge lengths or deep nesting;
* structure: unpack a seed, change one node (wrong type, huge or negative int, NaN, a
  long string, deep nesting, an extra key, a dropped key), pack it again.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import msgpack

# msgpack headers that claim far more than any input holds, and nesting bombs.
HOSTILE = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GB
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
    b"\xc7\x0c\xff" + b"\x00" * 12,  # timestamp96 ext
    b"\xdc\xff\xff",  # array16 of 65535
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # int64 min
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # float64 NaN
    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # float64 +inf
    b"\xc1",  # never used
    b"\x91" * 2000,  # 2000 nested arrays
    b"\x81\xa1k" * 1000,  # 1000 nested maps
    b"\x81\xc4\x01k",  # a map with a bin key (strict_map_key refuses)
    b"\x81\x01\x01",  # a map with an int key
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8 in a str
    b"\xa2\xed\xa0",  # a UTF-8 encoded surrogate
]


def bytes_mutation(data: bytes, rng: random.Random, pool: list[bytes] | None = None, rounds: int | None = None) -> bytes:
    """``data`` changed by 1..4 random byte-level edits."""
    buf = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        pos = rng.randint(0, n) if n else 0
        if op == 0 and n:  # flip bits
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncate
            del buf[pos:]
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and n:  # delete a range
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 4 and n:  # duplicate a range
            end = min(n, pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end]
        elif op == 5:  # overwrite with a hostile msgpack header
            h = rng.choice(HOSTILE)
            buf[pos:pos + len(h)] = h
        elif op == 6 and n:  # set a byte to an interesting value
            buf[rng.randrange(n)] = rng.choice((0x00, 0x7f, 0x80, 0xc0, 0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0xff))
        elif op == 7 and pool:  # splice with another seed
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 8 and n >= 4:  # write a big-endian length
            i = rng.randrange(n - 3)
            buf[i:i + 4] = struct.pack(">I", rng.choice((0, 1, 0x7fffffff, 0xffffffff, len(buf) + 1)))
    return bytes(buf)


def _nested(depth: int, leaf: Any = 0) -> Any:
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"x": v}
    return v


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack-native value a decoder does not expect."""
    choices = [
        None, True, False, 0, -1, 1 << 62, (1 << 64) - 1, -(1 << 63), math.nan, math.inf, -0.0, 1e308,
        "", "x" * rng.choice((1, 64, 65, 129, 300, 5000)), "\u202e\u0000\u00ff", b"", b"\x00" * rng.choice((1, 15, 16, 17, 32, 64)),
        [], {}, [None] * rng.randint(1, 40), {"k": "v"}, {"": None},
        _nested(rng.choice((15, 16, 17, 40, 200))),
    ]
    if depth < 2:
        choices.append([odd_value(rng, depth + 1) for _ in range(rng.randint(1, 3))])
        choices.append({rng.choice(("a", "m", "id", "v", "k", "b", "t")): odd_value(rng, depth + 1)})
    return rng.choice(choices)


def _paths(value: Any, prefix: tuple = (), out: list | None = None, limit: int = 200) -> list[tuple]:
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(prefix)
    if isinstance(value, dict):
        for k, v in value.items():
            _paths(v, prefix + (k,), out, limit)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _paths(v, prefix + (i,), out, limit)
    return out


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def tree_mutation(value: Any, rng: random.Random) -> Any:
    """A deep copy of ``value`` with one node changed (or a key added or dropped)."""
    value = msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)
    paths = _paths(value)
    path = rng.choice(paths)
    op = rng.randrange(4)
    if not path:
        return odd_value(rng) if op == 0 else value
    parent = _get(value, path[:-1])
    key = path[-1]
    if op == 3 and isinstance(parent, dict):
        parent.pop(key, None)
    elif op == 2 and isinstance(parent, dict):
        parent[rng.choice(("zz", "re", "d", "seq", "extra", "route", "job"))] = odd_value(rng)
    elif op == 2 and isinstance(parent, list):
        parent.append(odd_value(rng))
    else:
        parent[key] = odd_value(rng)
    return value


def payload_mutation(payload: bytes, rng: random.Random) -> bytes:
    """Unpack a msgpack payload, mutate one node, pack it again (falls back to bytes)."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        return msgpack.packb(tree_mutation(doc, rng), use_bin_type=True)
    except Exception:
        return bytes_mutation(payload, rng)
