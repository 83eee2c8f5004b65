"""Tokens/s of the default model whole, with every slot on a loopback ggml RPC lender,
and with half of them (issue 16 groundwork; mesh.inference.split_load).

Each run loads the model in a fresh process (generate_in_child) and generates greedily;
the lender is one process for all runs. Rounds alternate the configurations; medians.

    .venv/bin/python bench/split_rpc.py            # --rounds 3 --tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics

from mesh.inference.models import default_model_path
from mesh.inference.rpc_lender import start_lender
from mesh.inference.split_load import generate_in_child


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="threads of the loading process and of the lender each")
    args = ap.parse_args()
    model = default_model_path()
    configs = {"whole": 0, "half (15 of 31 slots)": 15, "all (31 of 31 slots)": 31}
    speeds: dict[str, list[float]] = {k: [] for k in configs}
    texts: dict[str, set[str]] = {k: set() for k in configs}
    with start_lender(threads=args.threads) as lender:
        for _ in range(args.rounds):
            for name, slots in configs.items():
                eps = [lender.endpoint] if slots else []
                r = generate_in_child(model, eps, remote_layers=slots, max_tokens=args.tokens,
                                      n_threads=args.threads, timeout=300)
                speeds[name].append(r.tokens_per_s)
                texts[name].add(r.text)
    whole = statistics.median(speeds["whole"])
    out = {}
    for name in configs:
        med = statistics.median(speeds[name])
        out[name] = round(med, 1)
        same = texts[name] == texts["whole"]
        print(f"{name:24s} {med:6.1f} tokens/s  x{med / whole:.2f} of whole  same answer: {same}")
    print(json.dumps({"tokens": args.tokens, "threads": args.threads, "rounds": args.rounds, "tokens_per_s": out}))


if __name__ == "__main__":
    main()
