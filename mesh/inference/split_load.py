"""Load a GGUF with some of its layers on ggml RPC servers, and generate greedily.

Groundwork for issue 16 (one model across several peers). The lenders are ggml RPC
servers (``mesh.inference.rpc_lender``) on loopback; ``SplitModel`` connects to them
with ``ggml_backend_rpc_add_server``, passes their devices explicitly in
``llama_model_params.devices`` (llama-cpp-python's ``Llama`` leaves that NULL, ggml's own
device discovery does not find RPC servers, and ``Llama(rpc_servers=...)`` is ignored
in 0.3.36) and loads the model through llama.cpp's low-level API with ``n_gpu_layers``
slots remote, shared by ``tensor_split`` (plan: ``mesh.inference.split_plan``). A model
of n layers has n + 1 slots, the output head last: ``remote_layers=1`` puts only the
output head remote, ``n + 1`` everything but the token embeddings.

Generation here is a small standalone greedy loop (argmax of the logits, no sampler),
not the engine's ``ModelRunner``: enough to show a split model answers exactly what the
whole model answers. Wiring a split load into the engine process is not done.

A lost lender is fatal to the process that loaded the model: ggml's RPC client aborts
(SIGABRT) when its server's socket fails. So a split model runs in a process of its own:
``generate_in_child`` runs ``python -m mesh.inference.split_load`` and turns its death,
or a deadline passed, into a ``GenerationError`` that says so.

    python -m mesh.inference.split_load --rpc 127.0.0.1:50052 --remote-layers 15 \\
        --prompt "The capital of France is" --tokens 24
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mesh.errors import GenerationError, MeshError, ModelError
from mesh.inference.rpc_lender import check_endpoint, rpc_devices

GREEDY_PROMPT = "The three primary colors are"


@dataclass(frozen=True)
class GreedyResult:
    """One greedy generation."""

    text: str
    tokens: tuple[int, ...]
    prompt_tokens: int
    seconds: float  # decoding the generated tokens (the prompt's evaluation excluded)
    tokens_per_s: float
    n_layers: int
    remote_layers: int
    endpoints: tuple[str, ...]
    # llama.cpp's own account of where the weights went, from its load log ("RPC0[127.0.0.1:PORT]"
    # or "CPU_Mapped" -> MiB); filled by generate_in_child only
    buffers: tuple[tuple[str, float], ...] = ()

    def buffer_mib(self, endpoint: str) -> float:
        """MiB of model weights llama.cpp put on the RPC server at ``endpoint`` (0 if none)."""
        return sum(mib for name, mib in self.buffers if name.startswith("RPC") and name.endswith(f"[{endpoint}]"))


class SplitModel:
    """A model with its last ``remote_layers`` slots (llama.cpp's ``n_gpu_layers``: the
    repeating layers then the output head) on ``endpoints`` (shared as ``tensor_split``;
    by default llama.cpp shares by the devices' free memory), the rest in this process. Not thread-safe; use
    from one thread (the engine's rule, docs/engine.md)."""

    def __init__(
        self,
        path: Path,
        endpoints: Sequence[str] = (),
        *,
        remote_layers: int = 0,
        tensor_split: Sequence[float] | None = None,
        n_ctx: int = 512,
        n_threads: int | None = None,
    ) -> None:
        from mesh.inference.cpu_variant import default_threads, ensure_cpu_variant

        ensure_cpu_variant()
        import llama_cpp

        self._llama = llama_cpp
        self.endpoints = tuple(check_endpoint(e) for e in endpoints)
        if remote_layers and not self.endpoints:
            raise ModelError("remote layers asked for, but no RPC endpoint given")
        if tensor_split is not None and len(tensor_split) != len(self.endpoints):
            raise ModelError("tensor_split needs one share per endpoint")
        llama_cpp.llama_backend_init()
        self._devices = rpc_devices(self.endpoints) if self.endpoints else None
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = remote_layers if self.endpoints else 0
        if self._devices is not None:
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)  # declared c_void_p in llama_cpp.py
            if tensor_split is not None:
                n = llama_cpp.llama_max_devices()
                self._split = (ctypes.c_float * n)(*tensor_split, *([0.0] * (n - len(tensor_split))))
                params.tensor_split = self._split
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ModelError(f"llama.cpp could not load {path} with {remote_layers} layers on {list(self.endpoints)}")
        self.n_layers = llama_cpp.llama_model_n_layer(self.model)
        self.remote_layers = min(remote_layers, self.n_layers + 1) if self.endpoints else 0
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        threads = n_threads or default_threads()
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # as the engine's Llama (flash attention off by default there; llama.cpp's own default
        # is "auto", on for the CPU, and its greedy answer parts from the engine's after 8 tokens)
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ModelError("llama.cpp could not create a context for the split model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = n_ctx

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self._llama.llama_token * (len(data) + 8))()
        n = self._llama.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        if n < 0:
            raise GenerationError(f"prompt too long to tokenize ({-n} tokens)")
        return list(buf[:n])

    def _decode(self, tokens: Sequence[int]) -> None:
        arr = (self._llama.llama_token * len(tokens))(*tokens)
        rc = self._llama.llama_decode(self.ctx, self._llama.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise GenerationError(f"llama_decode failed ({rc})")

    def _argmax(self) -> int:
        import numpy as np

        logits = self._llama.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())  # first of equals, as a loop

    def greedy(self, prompt: str, max_tokens: int) -> GreedyResult:
        """Temperature 0: the most likely token each step, until an end-of-generation
        token or ``max_tokens``. Starts from an empty context each call."""
        from mesh.inference.engine import TokenTextDecoder, _Pieces

        self._llama.llama_memory_clear(self._llama.llama_get_memory(self.ctx), True)
        prompt_tokens = self.tokenize(prompt)
        if len(prompt_tokens) + max_tokens > self.n_ctx:
            raise GenerationError(f"prompt ({len(prompt_tokens)} tokens) + {max_tokens} do not fit {self.n_ctx}")
        self._decode(prompt_tokens)
        decoder = TokenTextDecoder(_Pieces(self.vocab))
        out: list[int] = []
        text = []
        started = time.perf_counter()
        for _ in range(max_tokens):
            token = self._argmax()
            if self._llama.llama_vocab_is_eog(self.vocab, token):
                break
            out.append(token)
            text.append(decoder.feed(token))
            if len(out) < max_tokens:
                self._decode([token])
        text.append(decoder.flush())
        seconds = time.perf_counter() - started
        return GreedyResult(
            text="".join(text),
            tokens=tuple(out),
            prompt_tokens=len(prompt_tokens),
            seconds=seconds,
            tokens_per_s=len(out) / seconds if seconds > 0 else 0.0,
            n_layers=self.n_layers,
            remote_layers=self.remote_layers,
            endpoints=self.endpoints,
        )

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._llama.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self._llama.llama_model_free(self.model)
            self.model = None


def generate_in_child(
    model: Path,
    endpoints: Sequence[str] = (),
    *,
    remote_layers: int = 0,
    tensor_split: Sequence[float] | None = None,
    prompt: str = GREEDY_PROMPT,
    max_tokens: int = 24,
    n_threads: int | None = None,
    timeout: float = 120.0,
) -> GreedyResult:
    """``SplitModel(...).greedy(prompt, max_tokens)`` in a process of its own. Raises
    ``GenerationError`` when that process dies (a lender lost: ggml's RPC client aborts)
    or does not finish within ``timeout`` seconds (it is then killed)."""
    cmd = [sys.executable, "-m", "mesh.inference.split_load", "--model", str(model), "--json",
           "--remote-layers", str(remote_layers), "--prompt", prompt, "--tokens", str(max_tokens)]
    for ep in endpoints:
        cmd += ["--rpc", check_endpoint(ep)]
    if tensor_split is not None:
        cmd += ["--split", ",".join(str(s) for s in tensor_split)]
    if n_threads is not None:
        cmd += ["--threads", str(n_threads)]
    env = dict(os.environ, GGML_NO_BACKTRACE="1")  # an abort prints its reason, not a gdb session
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise GenerationError(
            f"the split model's generation did not finish within {timeout:.0f} s (lenders {list(endpoints)}); "
            f"killed it. Last output: {err.strip()[-1000:]}"
        ) from None
    if proc.returncode != 0:
        rc = proc.returncode
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        raise GenerationError(
            f"the split model's process died ({how}) with layers on {list(endpoints)}: a lender was lost or "
            f"refused the work. Last output: {_tail(err)}"
        )
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            d = json.loads(line)
            d["tokens"] = tuple(d["tokens"])
            d["endpoints"] = tuple(d["endpoints"])
            d["buffers"] = tuple((m.group(1), float(m.group(2))) for m in _BUFFER_LINE.finditer(err))
            return GreedyResult(**d)
    raise GenerationError(f"the split model's process printed no result: {_tail(err)}")


_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([0-9.]+) MiB")


def _tail(text: str, n: int = 4) -> str:
    """The last lines of a child's stderr, the RPC client's own complaint first when there is one."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    rpc = [ln for ln in lines if "RPC" in ln or "rpc" in ln]
    return " | ".join((rpc[-2:] if rpc else []) + lines[-n:])[-1500:]


def main(argv: list[str] | None = None) -> int:
    from mesh.inference.models import default_model_path

    ap = argparse.ArgumentParser(prog="python -m mesh.inference.split_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF path (default: the default model)")
    ap.add_argument("--rpc", action="append", default=[], help="a ggml RPC server, 127.0.0.1:PORT (repeatable)")
    ap.add_argument("--remote-layers", type=int, default=0, help="slots on the RPC servers: the last repeating layers and the output head (n_layers + 1: all)")
    ap.add_argument("--split", default=None, help="slots per server, comma separated (default: by free memory)")
    ap.add_argument("--prompt", default=GREEDY_PROMPT)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args(argv)
    split = [float(s) for s in args.split.split(",")] if args.split else None
    try:
        model = SplitModel(
            Path(args.model) if args.model else default_model_path(),
            args.rpc,
            remote_layers=args.remote_layers,
            tensor_split=split,
            n_threads=args.threads,
        )
        try:
            result = model.greedy(args.prompt, args.tokens)
        finally:
            model.close()
    except MeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = asdict(result)
        d.pop("buffers")
        print(json.dumps(d), flush=True)
    else:
        print(result.text)
        print(
            f"[{len(result.tokens)} tokens, {result.tokens_per_s:.1f} tokens/s, "
            f"{result.remote_layers}/{result.n_layers + 1} slots on {list(result.endpoints)}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
