"""mesh's engine against llama-cpp-python alone, on the same machine, in one run.

    .venv/bin/python bench/engine.py [--rounds 10] [--tokens 128] [--peer-arg=--threads=1 ...]

(a) baseline: llama-cpp-python by itself in a process of its own (a plain script:
    ``Llama(...).create_chat_completion(..., stream=True)``), with the thread count that
    is fastest here (swept first, 1 .. logical CPUs). It loads the same CPU variant as
    mesh's engine (``GGML_BACKEND_PATH``; the build ships one library per variant).
(b) mesh: a real ``mesh-peer`` at its default settings, asked through the Python client
    (what ``mesh ask`` does): signed RPC over CurveZMQ, the router, the engine process.

Same model (the default), same prompt, greedy (temperature 0), ``--tokens`` tokens,
rounds in ABBA order (a-b, b-a, ...) so neither side is favoured by going second. Per
round, the figures are paired and the medians of the per-pair ratios reported:

- decode tokens/s: (a) from its own stream's token times; (b) what ``mesh ask`` reports
  (the engine's decode rate). Target (b)/(a) >= 0.98.
- time to first token as the caller sees it; target: (b) - (a) <= 1 ms median.
- end to end (request to last token, as the caller sees it), for context.

Prints a readable report, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Explain in a few sentences why the sky is blue."


def say(msg: str) -> None:
    print(msg, flush=True)


# -- (a) the baseline worker: plain llama-cpp-python, nothing of mesh ----------------------


def baseline_worker(model: str, threads: int) -> None:
    """Load once; for each line on stdin (a max_tokens), stream one answer; print its figures."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        max_tokens = int(line)
        t0 = time.perf_counter()
        times = []
        for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0.0, stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
        end = time.perf_counter()
        n = len(times)
        decode = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else 0.0
        print(json.dumps({"ttft_s": times[0] - t0 if times else end - t0, "decode_tps": decode, "tokens": n,
                          "e2e_tps": n / (end - t0)}), flush=True)


class Baseline:
    def __init__(self, model: str, threads: int, env: dict[str, str]) -> None:
        self.threads = threads
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--baseline-worker", "--model", model, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
        )
        ready = json.loads(self._line())
        assert ready.get("ready")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline process exited ({self.proc.wait()})")
        return line

    def run(self, max_tokens: int) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{max_tokens}\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- (b) mesh ------------------------------------------------------------------------------


async def mesh_run(client, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    stream = client.astream(PROMPT, max_tokens=max_tokens, temperature=0.0)
    async for _ in stream:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    a = stream.answer
    assert a is not None
    return {"ttft_s": (first or end) - t0, "decode_tps": a.tokens_per_s, "tokens": a.completion_tokens,
            "e2e_tps": a.completion_tokens / (end - t0)}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def main_async(args: argparse.Namespace) -> dict:
    from mesh.client import Client
    from mesh.inference.cpu_variant import backend_env, cpu_summary, ensure_cpu_variant
    from mesh.inference.models import default_model_path
    from support.peerproc import PeerProcess

    model = str(default_model_path())
    variant = ensure_cpu_variant()
    env = backend_env(variant)
    cpu = cpu_summary()
    ncpu = os.cpu_count() or 1
    say(f"machine: {cpu['model']} [{' '.join(cpu['flags'])}], {ncpu} logical CPUs; CPU variant {variant.name}")

    say(f"\n(a) llama-cpp-python alone: thread sweep, 2 x {args.sweep_tokens} tokens each")
    sweep: dict[int, float] = {}
    for t in range(1, ncpu + 1):
        b = Baseline(model, t, env)
        try:
            b.run(8)
            sweep[t] = median([b.run(args.sweep_tokens)["decode_tps"] for _ in range(2)])
        finally:
            b.close()
        say(f"   {t} thread(s): {sweep[t]:.1f} tokens/s")
    best_threads = max(sweep, key=lambda t: sweep[t])
    say(f"   fastest: {best_threads} thread(s)")

    tmp = Path(tempfile.mkdtemp(prefix="mesh-bench-engine-"))
    extra = " ".join(args.peer_arg + args.peer_env)
    say(f"\n(b) starting mesh-peer (default settings{', ' + extra if extra else ''}) ...")
    saved = dict(os.environ)
    os.environ.update(dict(kv.split("=", 1) for kv in args.peer_env))  # the peer (and its engine) only
    try:
        peer = PeerProcess(tmp / "peer", *args.peer_arg)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    baseline = Baseline(model, best_threads, env)
    client = None
    try:
        peer.wait_ready()
        client = Client(peer.data_dir)
        info = await client.ainfo()
        build = (info.get("engine") or {}).get("build") or {}
        say(f"   peer ready: engine variant {build.get('variant')}, {build.get('threads')} threads, "
            f"pid {info.get('engine', {}).get('pid')}")
        # warm both (page cache, prompt cache)
        baseline.run(8)
        await mesh_run(client, 8)

        say(f"\n{args.rounds} rounds of {args.tokens} tokens, ABBA order")
        a_runs, b_runs = [], []
        for i in range(args.rounds):
            for which in ("ab" if i % 2 == 0 else "ba"):
                if which == "a":
                    a_runs.append(baseline.run(args.tokens))
                else:
                    b_runs.append(await mesh_run(client, args.tokens))
            a, b = a_runs[-1], b_runs[-1]
            say(f"   round {i + 1:2d}: llama-cpp-python {a['decode_tps']:5.1f} tok/s, ttft {a['ttft_s'] * 1000:6.1f} ms"
                f" | mesh {b['decode_tps']:5.1f} tok/s, ttft {b['ttft_s'] * 1000:6.1f} ms ({b['tokens']} tokens)")
    finally:
        if client is not None:
            await client.aclose()
        baseline.close()
        peer.stop()

    tps_ratio = median([b["decode_tps"] / a["decode_tps"] for a, b in zip(a_runs, b_runs)])
    e2e_ratio = median([b["e2e_tps"] / a["e2e_tps"] for a, b in zip(a_runs, b_runs)])
    ttft_added_ms = median([(b["ttft_s"] - a["ttft_s"]) * 1000 for a, b in zip(a_runs, b_runs)])
    figures = {
        "bench": "engine",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "cpu_variant": variant.name,
        "baseline_threads": best_threads,
        "peer_threads": build.get("threads"),
        "peer_args": args.peer_arg,
        "peer_env": args.peer_env,
        "thread_sweep_tok_s": {str(k): round(v, 2) for k, v in sweep.items()},
        "llama_cpp_python_tok_s": round(median([a["decode_tps"] for a in a_runs]), 2),
        "mesh_tok_s": round(median([b["decode_tps"] for b in b_runs]), 2),
        "tok_s_ratio": round(tps_ratio, 4),
        "e2e_ratio": round(e2e_ratio, 4),
        "llama_cpp_python_ttft_ms": round(median([a["ttft_s"] * 1000 for a in a_runs]), 2),
        "mesh_ttft_ms": round(median([b["ttft_s"] * 1000 for b in b_runs]), 2),
        "ttft_added_ms_median": round(ttft_added_ms, 3),
    }
    say("\nsummary")
    say(f"   decode tokens/s: llama-cpp-python {figures['llama_cpp_python_tok_s']}, mesh {figures['mesh_tok_s']}: "
        f"paired ratio {tps_ratio:.3f} (target >= 0.98) {'OK' if tps_ratio >= 0.98 else 'MISSED'}")
    say(f"   time to first token added by mesh: median {ttft_added_ms:+.2f} ms (target <= 1 ms) "
        f"{'OK' if ttft_added_ms <= 1 else 'MISSED'}")
    say(f"   end to end (request to last token) ratio {e2e_ratio:.3f}")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--sweep-tokens", type=int, default=64)
    p.add_argument("--peer-arg", action="append", default=[], help="extra mesh-peer argument (repeatable)")
    p.add_argument("--peer-env", action="append", default=[], metavar="K=V",
                   help="environment for the peer and its engine only (repeatable)")
    p.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_worker:
        baseline_worker(args.model, args.threads)
        return
    figures = asyncio.run(main_async(args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
