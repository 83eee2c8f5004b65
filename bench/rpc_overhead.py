"""What the signed RPC layer costs, measured in one run.

    .venv/bin/python bench/rpc_overhead.py [--rounds 20] [--tokens 128] [--latency-samples 40] [--pings 2000]

1. Tokens/s of the default model three ways: llama-cpp-python alone (a plain script in
   its own process, the user's real alternative), mesh's own backend in this process,
   and through the RPC protocol (what `mesh ask` does) to a `mesh-peer` in another
   process on loopback. Rounds run the three in rotating order with the same prompt and
   temperature 0; the figures are medians of the per-round ratios. Target: RPC / direct
   >= 0.97.
2. Added latency per request: how much longer the caller waits for the first token
   beyond the serving backend's own time to first token, through RPC minus in-process,
   paired per sample, max_tokens=1. Target: median < 2 ms.
3. Signed RPC round trips per second with a small body (`ping`), one at a time and 32
   in flight on one connection. The peer runs with `--rpc-rate 0` (no per-sender call
   limit): thousands of pings a second from one sender is what the limit exists to
   refuse, and a benchmark of the protocol must not measure the limiter instead.

Prints a readable report, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import engine as engine_bench  # noqa: E402  (bench/engine.py: the plain llama-cpp-python process)

from mesh.client import Client  # noqa: E402
from mesh.inference.backend import FinalStats, GenerationRequest, TextChunk  # noqa: E402
from mesh.inference.llama import LlamaBackend  # noqa: E402
from mesh.inference.models import default_model_path  # noqa: E402
from support.peerproc import PeerProcess  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."


def say(msg: str) -> None:
    print(msg, flush=True)


async def direct_run(backend: LlamaBackend, request: GenerationRequest) -> tuple[float, int, float]:
    """(seconds to first token seen by the caller minus the backend's own, completion
    tokens, decode tokens/s) generating in-process."""
    t0 = time.perf_counter()
    first = None
    stats = None
    async for item in backend.stream(request):
        if isinstance(item, TextChunk) and first is None:
            first = time.perf_counter() - t0
        elif isinstance(item, FinalStats):
            stats = item
    assert stats is not None
    seen = first if first is not None else time.perf_counter() - t0
    return seen - stats.time_to_first_token_s, stats.completion_tokens, stats.tokens_per_s


async def rpc_run(client: Client, request: GenerationRequest) -> tuple[float, int, float]:
    """The same through RPC: the first figure is the caller's time to first token minus
    the serving backend's own (transport, envelopes, both event loops)."""
    t0 = time.perf_counter()
    first = None
    m = request.messages[-1]
    stream = client.astream(m.content, max_tokens=request.max_tokens, temperature=request.temperature,
                            seed=request.seed)
    async for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
    a = stream.answer
    assert a is not None
    seen = first if first is not None else time.perf_counter() - t0
    return seen - a.time_to_first_token_s, a.completion_tokens, a.tokens_per_s


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def main_async(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    say("loading the default model in this process ...")
    backend = LlamaBackend(default_model_path(), n_ctx=2048)
    from mesh.inference.cpu_variant import backend_env, ensure_cpu_variant
    from mesh.inference.engine import default_threads

    say("starting llama-cpp-python alone in a process of its own ...")
    raw = engine_bench.Baseline(str(default_model_path()), default_threads(), backend_env(ensure_cpu_variant()))
    say("starting a mesh-peer process on loopback (--rpc-rate 0: see 3.) ...")
    peer = PeerProcess(tmp / "peer", "--rpc-rate", "0")
    try:
        peer.wait_ready()
        client = Client(peer.data_dir)
        long_req = GenerationRequest.from_prompt(PROMPT, max_tokens=args.tokens, temperature=0.0, seed=7)
        short_req = GenerationRequest.from_prompt(PROMPT, max_tokens=1, temperature=0.0, seed=7)
        # warm both sides (page cache, prompt cache)
        await direct_run(backend, short_req)
        await rpc_run(client, short_req)

        raw.run(8)
        say(f"\n1. tokens/s, {args.rounds} rounds of {args.tokens} tokens, order rotating each round")
        d_wall: list[float] = []
        r_wall: list[float] = []
        l_wall: list[float] = []
        orders = [("direct", "rpc", "raw"), ("rpc", "raw", "direct"), ("raw", "direct", "rpc")]
        for i in range(args.rounds):
            for which in orders[i % 3]:  # no side always runs after the same other
                t0 = time.perf_counter()
                if which == "direct":
                    _, n, _ = await direct_run(backend, long_req)
                    d_wall.append(n / (time.perf_counter() - t0))
                elif which == "rpc":
                    _, n, _ = await rpc_run(client, long_req)
                    r_wall.append(n / (time.perf_counter() - t0))
                else:
                    l_wall.append(raw.run(args.tokens)["e2e_tps"])
            say(f"   round {i + 1}: llama-cpp-python {l_wall[-1]:.1f}, mesh backend in-process {d_wall[-1]:.1f}, "
                f"via RPC {r_wall[-1]:.1f} tok/s (as seen by caller)")
        direct = statistics.median(d_wall)
        via_rpc = statistics.median(r_wall)
        llama_alone = statistics.median(l_wall)
        # paired per round, so drift in machine speed between rounds cancels out
        ratios = [r / d for r, d in zip(r_wall, d_wall)]
        ratio = statistics.median(ratios)
        raw_ratio = statistics.median([r / x for r, x in zip(r_wall, l_wall)])
        say(f"   per-round RPC / in-process ratios: {', '.join(f'{x:.3f}' for x in ratios)}")

        say(f"\n2. added latency, {args.latency_samples} paired samples (max_tokens=1)")
        # Each sample's overhead is what the caller waited for its first token beyond the
        # serving backend's own time to first token, so prompt evaluation (and its noise)
        # cancels out; the RPC overhead is then paired with the in-process overhead.
        deltas = []
        for _ in range(args.latency_samples):
            d_over, _, _ = await direct_run(backend, short_req)
            r_over, _, _ = await rpc_run(client, short_req)
            deltas.append((r_over - d_over) * 1000)
        lat_med, lat_p95 = statistics.median(deltas), pct(deltas, 0.95)
        say(f"   median {lat_med:+.2f} ms, p95 {lat_p95:+.2f} ms")

        say(f"\n3. signed round trips, {args.pings} pings")
        rpc = await client._connection()
        t0 = time.perf_counter()
        for _ in range(args.pings):
            await rpc.call("ping", {}, timeout_s=10)
        serial = args.pings / (time.perf_counter() - t0)
        sem = asyncio.Semaphore(32)

        async def one():
            async with sem:
                await rpc.call("ping", {}, timeout_s=10)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.pings)))
        concurrent = args.pings / (time.perf_counter() - t0)
        say(f"   one at a time: {serial:.0f}/s; 32 in flight: {concurrent:.0f}/s")
        await client.aclose()
    finally:
        peer.stop()
        raw.close()
        await backend.aclose()

    figures = {
        "bench": "rpc_overhead",
        "tokens": args.tokens,
        "rounds": args.rounds,
        "direct_tok_s": round(direct, 2),
        "rpc_tok_s": round(via_rpc, 2),
        "ratio": round(ratio, 4),
        "ratio_of_medians": round(via_rpc / direct, 4),
        "llama_cpp_python_tok_s": round(llama_alone, 2),
        "rpc_vs_llama_cpp_python": round(raw_ratio, 4),
        "added_latency_ms_median": round(lat_med, 3),
        "added_latency_ms_p95": round(lat_p95, 3),
        "ping_rt_per_s_serial": round(serial, 1),
        "ping_rt_per_s_32_in_flight": round(concurrent, 1),
    }
    say("\nsummary")
    say(f"   tokens/s direct {direct:.1f}, via RPC {via_rpc:.1f}: paired ratio {ratio:.3f} (target >= 0.97)"
        f" {'OK' if ratio >= 0.97 else 'MISSED'}")
    say(f"   via RPC / llama-cpp-python alone: {raw_ratio:.3f} (llama-cpp-python {llama_alone:.1f} tok/s)")
    say(f"   added latency median {lat_med:.2f} ms (target < 2 ms) {'OK' if lat_med < 2 else 'MISSED'},"
        f" p95 {lat_p95:.2f} ms")
    say(f"   signed round trips/s: {serial:.0f} serial, {concurrent:.0f} with 32 in flight")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--latency-samples", type=int, default=40)
    p.add_argument("--pings", type=int, default=2000)
    args = p.parse_args()
    figures = asyncio.run(main_async(args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
