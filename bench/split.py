"""One model split across peers (issue 16): tokens/s and time to first token of the default
model whole, split over 2 and over 3 peers in network namespaces through the mesh's
tunnel, and the same splits over raw loopback TCP (the engine talking straight to ggml RPC
servers on this host's loopback: the alternative without the mesh), in one run.

- whole: the engine process (mesh.inference.engine_backend) with the model loaded whole.
- raw-N: the same engine with the same placement as mesh-N (remote slots and their
  shares read from the mesh run), its lenders ggml RPC servers on 127.0.0.1.
- mesh-N: real mesh-peer processes, one per namespace: a borrower whose --models-ram
  cannot hold the model and N-1 lenders (--lend-memory), asked with `mesh ask`.

Every figure comes from the engine's own stats (tokens/s of decoding, time to first
token from admission), so the mesh's RPC and routing are not in them: what differs
between raw-N and mesh-N is the link (tunnel through CurveZMQ over a veth pair, against
plain loopback TCP). Also: bytes through the tunnels per generated token, and the memory
(anonymous RSS) of the borrower's engine and of each lender's ggml RPC server.

One thread per process (2 cores: a pipeline computes one stage at a time anyway).
Root is needed for the namespaces.

    .venv/bin/python bench/split.py            # --rounds 3 --tokens 64
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

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mesh.inference.backend import GenerationRequest, Message  # noqa: E402
from mesh.inference.engine_backend import EngineBackend  # noqa: E402
from mesh.inference.models import default_model_path  # noqa: E402
from mesh.inference.rpc_lender import start_lender  # noqa: E402
from support import netns  # noqa: E402
from support.meshhosts import Host, wait_until  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."
SETUPS = {  # peers -> (borrower --models-ram GB, each lender's --lend-memory GB)
    2: ("0.06", "0.06"),
    3: ("0.045", "0.035"),
}


def say(msg: str) -> None:
    print(msg, flush=True)


def rss_mib(pid: int | None) -> float:
    """Anonymous resident memory (RSS less file-backed pages): what the process holds of
    its own. The engine maps the whole GGUF file and reads the remote layers from it to
    send them, so its plain RSS counts page cache that the kernel can drop."""
    try:
        m = psutil.Process(pid).memory_info() if pid else None
    except psutil.Error:
        return 0.0
    return (m.rss - m.shared) / (1 << 20) if m else 0.0


def ggml_server_pid(peer_pid: int) -> int | None:
    for c in psutil.Process(peer_pid).children(recursive=True):
        try:
            if "mesh.inference.rpc_lender" in " ".join(c.cmdline()):
                return c.pid
        except psutil.Error:
            continue
    return None


def summary(runs: list[dict]) -> dict:
    return {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in runs), 2),
            "ttft_s": round(statistics.median(r["time_to_first_token_s"] for r in runs), 4),
            "tokens": runs[0]["completion_tokens"]}


def run_mesh(n: int, rounds: int, tokens: int, root: Path) -> dict:
    """Peers in namespaces, the borrower last; asks through `mesh ask`; the layout, speeds,
    tunnel bytes per token and memory."""
    ram, lend = SETUPS[n]
    with netns.Lab(n) as lab:
        hosts = [Host(lab[i], root / f"mesh{n}", f"lender{i}") for i in range(n - 1)]
        big = Host(lab[n - 1], root / f"mesh{n}", "big")
        try:
            hosts[0].start("--no-model", "--lend-memory", lend)
            for h in hosts[1:]:
                h.start("--no-model", "--lend-memory", lend, "--join-token", hosts[0].invite())
            big.start("--model", str(default_model_path()), "--models-ram", ram, "--join-token", hosts[0].invite())

            def info() -> dict:
                r = big.mesh("info", "--json", check=False)
                return json.loads(r.stdout) if r.returncode == 0 else {}

            took = wait_until(lambda: (info().get("engine") or {}).get("state") == "ready", "split model ready", 180)
            split = info()["memory_pool"]["split"]
            say(f"  mesh-{n}: ready after {took:.1f} s; slots " +
                ", ".join(f"{p['name']} {p['layers']}" for p in split["layers"]))
            before = sum(t["bytes_in"] + t["bytes_out"] for t in split["tunnels"])
            runs = []
            for i in range(rounds):
                r = big.mesh("ask", "--json", "--max-tokens", str(tokens), "--temperature", "0", "--seed", str(i),
                             PROMPT)
                runs.append(json.loads(r.stdout))
            after_split = info()["memory_pool"]["split"]
            after = sum(t["bytes_in"] + t["bytes_out"] for t in after_split["tunnels"])
            generated = sum(r["completion_tokens"] for r in runs)
            memory = {"big (engine)": round(rss_mib(info()["engine"].get("pid")), 1)}
            for h in hosts:
                pid = json.loads((h.data / "peer.json").read_text())["pid"]
                memory[f"{h.name} (ggml RPC server)"] = round(rss_mib(ggml_server_pid(pid)), 1)
            layers = {p["name"]: p["layers"] for p in split["layers"]}
            remote = [layers[h.name] for h in hosts if layers.get(h.name)]
            return {**summary(runs), "slots": layers, "remote_slots": sum(remote), "shares": remote,
                    "tunnel_bytes_per_token": round((after - before) / max(generated, 1)), "rss_mib": memory,
                    "texts": [r["text"] for r in runs]}
        finally:
            big.stop()
            for h in hosts:
                h.stop()


async def engine_runs(prepare, rounds: int, tokens: int) -> tuple[list[dict], int | None]:
    backend = EngineBackend(default_model_path(), n_ctx=512, n_threads=1, queue_limit=4, prepare=prepare,
                            warmup_tokens=8)
    await backend.start()
    runs = []
    try:
        for i in range(rounds):
            request = GenerationRequest(messages=(Message("user", PROMPT),), max_tokens=tokens, temperature=0.0,
                                        seed=i)
            text, final = [], None
            async for item in backend.stream(request):
                if hasattr(item, "tokens_per_s"):
                    final = item
                else:
                    text.append(item.text)
            runs.append({"tokens_per_s": final.tokens_per_s, "time_to_first_token_s": final.time_to_first_token_s,
                         "completion_tokens": final.completion_tokens, "text": "".join(text)})
        pid = backend.status().pid
        return runs, pid
    finally:
        await backend.aclose()


def run_raw(remote: int, shares: list[int], rounds: int, tokens: int, root: Path) -> dict:
    lenders = [start_lender(threads=1, cache_dir=root / f"raw-cache-{i}") for i in range(len(shares))]
    try:
        args = ["--remote-layers", str(remote), "--tensor-split", ",".join(map(str, shares))]
        for lender in lenders:
            args += ["--rpc", lender.endpoint]
        runs, pid = asyncio.run(engine_runs(lambda: list(args), rounds, tokens))
        memory = {f"lender{i} (ggml RPC server)": round(rss_mib(lender.pid), 1) for i, lender in enumerate(lenders)}
        return {**summary(runs), "texts": [r["text"] for r in runs], "rss_mib": memory}
    finally:
        for lender in lenders:
            lender.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="asks per configuration (medians)")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    why = netns.available()
    if why is not None:
        print(f"bench/split.py needs network namespaces (root): {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="mesh-bench-split-"))
    say(f"default model {default_model_path().name}, {args.rounds} asks of {args.tokens} tokens per configuration")
    results: dict[str, dict] = {}
    say("whole (one engine, no split) ...")
    runs, pid = asyncio.run(engine_runs(None, args.rounds, args.tokens))
    results["whole"] = {**summary(runs), "texts": [r["text"] for r in runs]}
    for n in (2, 3):
        say(f"mesh-{n}: {n} peers in namespaces, through the tunnel ...")
        results[f"mesh_{n}"] = run_mesh(n, args.rounds, args.tokens, root)
        m = results[f"mesh_{n}"]
        say(f"raw-{n}: the same placement ({m['remote_slots']} remote slots, {m['shares']}) over loopback TCP ...")
        results[f"raw_{n}"] = run_raw(m["remote_slots"], m["shares"], args.rounds, args.tokens, root)

    whole = results["whole"]
    say("")
    say(f"{'configuration':14s} {'tokens/s':>9s} {'TTFT ms':>8s} {'x whole':>8s} {'same text':>9s}  tunnel B/token")
    for name, r in results.items():
        same = r["texts"] == whole["texts"]
        per_tok = r.get("tunnel_bytes_per_token", "-")
        say(f"{name:14s} {r['tokens_per_s']:9.1f} {1000 * r['ttft_s']:8.1f} {r['tokens_per_s'] / whole['tokens_per_s']:8.2f} "
            f"{str(same):>9s}  {per_tok}")
    figures: dict = {"bench": "split", "rounds": args.rounds, "tokens": args.tokens,
                     "whole": {k: whole[k] for k in ("tokens_per_s", "ttft_s")}}
    for n in (2, 3):
        m, r = results[f"mesh_{n}"], results[f"raw_{n}"]
        ratio = m["tokens_per_s"] / r["tokens_per_s"]
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        say(f"{n} peers: tunnel tokens/s {ratio:.2f}x raw loopback TCP (target >= 0.90: {verdict}); "
            f"TTFT {m['ttft_s'] * 1000:.0f} ms vs {r['ttft_s'] * 1000:.0f} ms; slots {m['slots']}; "
            f"memory MiB mesh {m['rss_mib']}, raw {r['rss_mib']}")
        figures[f"split_{n}"] = {
            "tunnel_tokens_per_s": m["tokens_per_s"], "raw_tokens_per_s": r["tokens_per_s"],
            "tunnel_vs_raw": round(ratio, 3), "target_met": ratio >= 0.9,
            "tunnel_ttft_s": m["ttft_s"], "raw_ttft_s": r["ttft_s"], "slots": m["slots"],
            "tunnel_bytes_per_token": m["tunnel_bytes_per_token"], "rss_mib": m["rss_mib"],
            "raw_rss_mib": r["rss_mib"], "same_text_as_whole": m["texts"] == whole["texts"],
        }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    print(f"# {time.monotonic() - t0:.0f} s", file=sys.stderr)
    sys.exit(rc)
