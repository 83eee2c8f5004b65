"""Cold starts: a prompt for a model a peer has on disk but not loaded, and routing around
a peer whose model is cold.

    .venv/bin/python bench/cold_start.py [--prompts 10]

Real models, real mesh-peer processes on loopback: SmolLM2-135M-Instruct (each peer's
first model, loaded at start) and Gemma 3 270M (the second ``--model``: served on
demand, each load in an engine process of its own).

1. ``cold``: time to first token of a prompt for Gemma on a peer where it is cold
   (engine process start, model load, warm-up, then the prompt), then of the same
   prompt again (warm). Baseline, same run: llama-cpp-python alone in a fresh process,
   ``Llama(gemma)`` then a streamed completion's first token (load + first token; the
   file is in the page cache for both).
2. ``routing``: an entry peer (``--no-model``) and two workers holding Gemma, warm on A
   (asked once beforehand), cold on B. ``--prompts`` prompts for Gemma, one at a time,
   routed by mesh's router (which sees B's ``cold`` and ``load_s`` in gossip), then
   pinned round robin A, B, A, ... (a balancer that does not know). Latency per prompt
   from send to last token; p95 and max compared.

Prints progress and a report, then ONE line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mesh import Client  # noqa: E402
from mesh.inference.known_models import gemma3_270m_path  # noqa: E402
from mesh.inference.models import default_model_path  # noqa: E402
from support.peerproc import PeerProcess, run_mesh, wait_until  # noqa: E402

GEMMA = "gemma-3-270m"
PROMPT = "What is the capital of France?"

BASELINE = r"""
import sys, time, json, os
from mesh.inference.cpu_variant import ensure_cpu_variant  # the CPU kernels the engine picks
ensure_cpu_variant()
import llama_cpp
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)
loaded = time.perf_counter()
for chunk in llm.create_completion("Question: " + sys.argv[2] + "\nAnswer:", max_tokens=8, stream=True, temperature=0):
    first = time.perf_counter()
    break
print(json.dumps({"load_s": loaded - t0, "ttft_s": first - t0}))
"""


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def baseline(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", BASELINE, str(path), PROMPT], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"baseline failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


async def timed_ask(client: Client, **kw) -> tuple[float, float, str]:
    """(time to first token, total, who answered)."""
    t0 = time.perf_counter()
    first = None
    stream = client.astream(PROMPT, max_tokens=8, temperature=0.0, no_escalate=True, **kw)
    async for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first if first is not None else total, total, stream.answer.peer


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=10)
    args = ap.parse_args()
    gemma, smol = gemma3_270m_path(), default_model_path()
    gemma.read_bytes()  # in the page cache for every run below
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-cold-"))
    figures: dict = {}

    say("baseline: llama-cpp-python alone, Llama(gemma) + first token")
    base = baseline(gemma)
    say(f"  load {base['load_s']:.2f} s, first token {base['ttft_s']:.2f} s after the load began")

    say("part 1: a peer with SmolLM2 loaded and Gemma on demand")
    solo = PeerProcess(work / "solo", "--no-http", "--model", str(smol), "--model", str(gemma), "--threads", "2")
    try:
        solo.wait_ready(180)

        async def part1():
            async with Client(solo.data_dir, timeout_s=300) as c:
                cold = await timed_ask(c, model=GEMMA)
                warm = await timed_ask(c, model=GEMMA)
            return cold, warm

        cold, warm = asyncio.run(part1())
    finally:
        solo.stop()
    figures["cold"] = {"cold_ttft_s": round(cold[0], 3), "warm_ttft_s": round(warm[0], 3),
                       "baseline_load_plus_first_token_s": round(base["ttft_s"], 3),
                       "cold_vs_baseline": round(cold[0] / base["ttft_s"], 3)}
    say(f"  cold {cold[0]:.2f} s, warm {warm[0]:.2f} s to the first token")

    say("part 2: routing around a cold peer (entry --no-model, A warm, B cold)")
    peers: list[PeerProcess] = []
    try:
        entry = PeerProcess(work / "entry", "--name", "entry", "--no-http", "--no-model")
        peers.append(entry)
        join = entry.wait_ready()["endpoint"].removeprefix("tcp://")
        for name in ("A", "B"):
            token = run_mesh("invite", data_dir=entry.data_dir).stdout.strip()
            peers.append(PeerProcess(work / name, "--name", name, "--join-token", token, "--join", join, "--no-http",
                                     "--model", str(smol), "--model", str(gemma), "--threads", "1"))
        for p in peers[1:]:
            p.wait_ready(180)
        ids = {name: p.info["peer_id"] for name, p in zip(("A", "B"), peers[1:])}

        def gemma_seen() -> dict:
            r = run_mesh("peers", "--json", data_dir=entry.data_dir)
            out = {}
            for m in json.loads(r.stdout) if r.returncode == 0 else []:
                for model in (m.get("meta") or {}).get("models", []):
                    if model["name"] == GEMMA:
                        out[m["name"]] = model
            return out

        wait_until(lambda: set(gemma_seen()) == {"A", "B"}, 60)

        async def part2():
            async with Client(entry.data_dir, timeout_s=300) as c:
                await timed_ask(c, model=GEMMA, peer=ids["A"])  # A warm
                await asyncio.to_thread(wait_until, lambda: "cold" not in gemma_seen()["A"], 30)
                mesh_runs = [await timed_ask(c, model=GEMMA) for _ in range(args.prompts)]
                rr_runs = [await timed_ask(c, model=GEMMA, peer=ids["AB"[i % 2]]) for i in range(args.prompts)]
            return mesh_runs, rr_runs

        say(f"  gossip at the entry: {gemma_seen()}")
        mesh_runs, rr_runs = asyncio.run(part2())
    finally:
        for p in peers:
            p.stop()
    name_of = {v: k for k, v in ids.items()}
    for label, runs in (("mesh", mesh_runs), ("round_robin", rr_runs)):
        totals = [t for _, t, _ in runs]
        figures[label] = {"p50_s": round(statistics.median(totals), 3), "p95_s": round(pct(totals, 0.95), 3),
                          "max_s": round(max(totals), 3),
                          "by_peer": {n: sum(1 for *_, p in runs if name_of.get(p) == n) for n in ("A", "B")}}
    figures["p95_mesh_vs_round_robin"] = round(figures["mesh"]["p95_s"] / figures["round_robin"]["p95_s"], 3)

    print()
    print("cold start, Gemma 3 270M (253 MB), SmolLM2 loaded beside it")
    c = figures["cold"]
    print(f"  first token, cold on a peer:              {c['cold_ttft_s']:6.2f} s")
    print(f"  first token, warm:                        {c['warm_ttft_s']:6.2f} s")
    print(f"  llama-cpp-python alone, load + 1st token: {c['baseline_load_plus_first_token_s']:6.2f} s "
          f"(cold on a peer: {c['cold_vs_baseline']:.2f}x that)")
    print(f"routing around a cold peer, {args.prompts} prompts for Gemma one at a time (B cold, A warm)")
    for label in ("mesh", "round_robin"):
        f = figures[label]
        print(f"  {label:12} p50 {f['p50_s']:6.2f} s  p95 {f['p95_s']:6.2f} s  max {f['max_s']:6.2f} s  "
              f"by peer {f['by_peer']}")
    print(f"  p95 mesh / round robin: {figures['p95_mesh_vs_round_robin']:.2f}")
    print(json.dumps({"bench": "cold_start", "prompts": args.prompts, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
