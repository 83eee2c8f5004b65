"""Small, valid GGUF files for tests of the model store and pulls (no model needed).

``write_gguf(path, size=..., name=..., seed=...)`` writes a GGUF v3 file with the
metadata mesh reads (architecture, size label, file type, context length) and one F32
tensor whose data makes the file about ``size`` bytes; ``seed`` varies the data, so two
files with different seeds have different SHA-256s. llama.cpp could not run it, but
``check_model_file`` and ``read_gguf_metadata`` accept it, as they would a real model.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

_STRING, _U32 = 8, 4


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STRING) + struct.pack("<Q", len(v)) + v


def _kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _U32) + struct.pack("<I", value)


def write_gguf(path: Path, *, size: int = 300_000, arch: str = "llama", size_label: str = "1M",
               file_type: int = 0, context: int = 2048, seed: int = 0) -> Path:
    kvs = [_kv_string("general.architecture", arch), _kv_string("general.size_label", size_label),
           _kv_u32("general.file_type", file_type), _kv_u32(f"{arch}.context_length", context)]
    head_guess = 24 + sum(map(len, kvs)) + 64
    elements = max(8, (size - head_guess) // 4)
    tname = b"weights"
    tensor = struct.pack("<Q", len(tname)) + tname + struct.pack("<I", 1) + struct.pack("<Q", elements)
    tensor += struct.pack("<I", 0) + struct.pack("<Q", 0)  # F32 at data offset 0
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + tensor
    head += b"\0" * (-len(head) % 32)
    rng, left = random.Random(seed), elements * 4
    with open(path, "wb") as f:  # in chunks: randbytes of a gigabyte overflows
        f.write(head)
        while left:
            n = min(left, 64 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return Path(path)
