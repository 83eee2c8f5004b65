"""What the HTTP API costs: time to first token and tokens/s of the same prompt through
the OpenAI-compatible HTTP API (streaming), through `mesh ask`'s path (the Python client
over signed RPC), and through llama-cpp-python alone, in one run.

    .venv/bin/python bench/http_overhead.py [--rounds 20] [--tokens 32]

- engine alone: llama-cpp-python in a process of its own (bench/engine.py's baseline
  worker, the same model and CPU variant, the thread count mesh's engine uses).
- RPC: a real ``mesh-peer`` asked with ``mesh.client.Client.astream`` (what ``mesh ask``
  does): CurveZMQ, the signed envelope, the router, the engine process.
- HTTP: the same peer's ``POST /v1/chat/completions`` with ``stream: true`` over a kept
  alive aiohttp connection; time to first token is the first SSE chunk carrying text.

Tokens/s is what the caller sees: tokens after the first text over the time from it to
the end of the stream, the same measure for all three (the baseline's own figure is
from its token times, which llama-cpp-python streams one by one).

Rounds rotate the order (engine, RPC, HTTP; RPC, HTTP, engine; ...), greedy, the same
prompt. Medians of the paired per-round differences. Target (issue 17): HTTP adds at
most 1 ms to time to first token at the median, against the RPC path (both reach the
same router and engine; what differs is the front door).

Prints a readable report, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Explain in a few sentences why the sky is blue."


def say(msg: str) -> None:
    print(msg, flush=True)


def load_engine_bench():
    """bench/engine.py as a module: its llama-cpp-python baseline worker."""
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def rpc_run(client, tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    stream = client.astream(PROMPT, max_tokens=tokens, temperature=0.0, no_escalate=True)
    async for _ in stream:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    a = stream.answer
    return {"ttft_s": (first or end) - t0, "tokens": a.completion_tokens,
            "decode_tps": seen_rate(a.completion_tokens, first, end)}


def seen_rate(tokens: int, first: float | None, end: float) -> float:
    """Tokens per second as the caller sees them arrive: the tokens after the first
    text, over the time from it to the end of the stream (text comes in chunks, so the
    chunk times themselves are not token times)."""
    return (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else 0.0


async def http_run(session, url: str, tokens: int) -> dict:
    body = {"model": "mesh", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft_s": (first or end) - t0, "decode_tps": seen_rate(tokens, first, end), "tokens": tokens}


async def main_async(args) -> dict:
    import aiohttp

    from mesh.client import Client
    from mesh.inference.cpu_variant import backend_env, default_threads, ensure_cpu_variant
    from mesh.inference.models import default_model_path
    from support.peerproc import PeerProcess

    engine_bench = load_engine_bench()
    variant = ensure_cpu_variant()
    threads = default_threads()
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-http-"))
    say(f"starting a mesh-peer (HTTP on) and llama-cpp-python alone ({threads} threads, CPU variant {variant.name})")
    peer = PeerProcess(work / "peer", "--name", "bench", "--threads", str(threads))
    baseline = engine_bench.Baseline(str(default_model_path()), threads, backend_env(variant))
    try:
        info = peer.wait_ready()
        url = info["http"]
        client = Client(peer.data_dir, timeout_s=120)
        runs: dict[str, list[dict]] = {"engine": [], "rpc": [], "http": []}
        async with aiohttp.ClientSession() as session:
            order = ["engine", "rpc", "http"]
            for warm in range(2):  # connections, caches, the first-call paths
                baseline.run(4)
                await rpc_run(client, 4)
                await http_run(session, url, 4)
            for i in range(args.rounds):
                for name in order[i % 3:] + order[:i % 3]:
                    if name == "engine":
                        runs[name].append(await asyncio.to_thread(baseline.run, args.tokens))
                    elif name == "rpc":
                        runs[name].append(await rpc_run(client, args.tokens))
                    else:
                        runs[name].append(await http_run(session, url, args.tokens))
                if (i + 1) % 5 == 0:
                    say(f"  round {i + 1}/{args.rounds}")
        return runs
    finally:
        baseline.close()
        peer.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    runs = asyncio.run(main_async(args))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("ttft_s", "decode_tps")} for k, v in runs.items()}
    http_minus_rpc = statistics.median(h["ttft_s"] - r["ttft_s"] for h, r in zip(runs["http"], runs["rpc"]))
    rpc_minus_engine = statistics.median(r["ttft_s"] - e["ttft_s"] for r, e in zip(runs["rpc"], runs["engine"]))
    http_minus_engine = statistics.median(h["ttft_s"] - e["ttft_s"] for h, e in zip(runs["http"], runs["engine"]))
    say("")
    say(f"{args.rounds} rounds of {args.tokens} tokens, greedy; medians")
    say(f"{'path':28s} {'TTFT ms':>8s} {'tok/s seen':>13s}")
    for name, label in (("engine", "llama-cpp-python alone"), ("rpc", "mesh ask (client over RPC)"),
                        ("http", "HTTP API, streaming")):
        say(f"{label:28s} {1000 * med[name]['ttft_s']:8.1f} {med[name]['decode_tps']:13.1f}")
    verdict = "PASS" if http_minus_rpc <= 0.001 else "FAIL"
    say(f"HTTP - RPC time to first token (paired median): {1000 * http_minus_rpc:+.2f} ms  (target <= +1 ms: {verdict})")
    say(f"RPC - engine alone: {1000 * rpc_minus_engine:+.2f} ms; HTTP - engine alone: {1000 * http_minus_engine:+.2f} ms")
    say(f"decode tokens/s HTTP / RPC: {med['http']['decode_tps'] / med['rpc']['decode_tps']:.3f}; "
        f"RPC / engine alone: {med['rpc']['decode_tps'] / med['engine']['decode_tps']:.3f}")
    print(json.dumps({
        "bench": "http_overhead", "rounds": args.rounds, "tokens": args.tokens,
        "ttft_ms": {k: round(1000 * v["ttft_s"], 2) for k, v in med.items()},
        "decode_tps": {k: round(v["decode_tps"], 2) for k, v in med.items()},
        "http_minus_rpc_ttft_ms": round(1000 * http_minus_rpc, 3),
        "rpc_minus_engine_ttft_ms": round(1000 * rpc_minus_engine, 3),
        "http_minus_engine_ttft_ms": round(1000 * http_minus_engine, 3),
        "target_met": http_minus_rpc <= 0.001,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
