"""What measuring confidence while generating costs in tokens/s, on the default model.

Run: ``.venv/bin/python bench/confidence_cost.py [--rounds N] [--tokens N] [--no-logits-all]``

In one process and on one loaded model, it drives the backend's own generation loop
(``mesh.inference.engine.generate_once``) at temperature 0, alternating plain generation
(no logits processor) with generation through the confidence recorder, and compares
their decode rates (tokens after the first, per second; prompt evaluation excluded).
Both ways must produce the same tokens: the recorder only reads the logits. For
comparison it then times three runs on a second instance loaded with ``logits_all=True``
(the expensive way to get log-probabilities), decode rate and time to first token on a
fresh prompt. The tokens/s of two runs on a shared machine differ by several percent
from noise alone, so it also times the recorder by itself on a vocabulary-sized row and
states that per-step cost as a share of a token's time. The report ends with one line
of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama

from mesh.inference.backend import GenerationRequest
from mesh.inference.confidence import LogitsRecorder
from mesh.inference.engine import ChatPrompter, default_threads, generate_once
from mesh.inference.models import check_model_file, default_model_path

PROMPT = "Write a long story about a dragon who learns to fly."
TARGET_COST_PCT = 10.0


def load(path: str, *, logits_all: bool, n_ctx: int, threads: int) -> Llama:
    return Llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, logits_all=logits_all, verbose=False)


def run(llm: Llama, prompt: list[int], tokens: int, *, confidence: bool):
    gen = generate_once(llm, prompt, max_tokens=tokens, temperature=0.0, seed=0, confidence=confidence)
    if len(gen.token_ids) != tokens:
        raise SystemExit(f"generation stopped after {len(gen.token_ids)} tokens; pick a prompt that runs longer")
    return gen


def recorder_step_us(n_vocab: int, steps: int = 2000) -> float:
    """Microseconds per recorder call on a strided float32 row, as llama-cpp-python passes it."""
    dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
    cand = np.zeros(n_vocab, dtype=dtype).view(np.recarray)
    cand.logit = np.random.default_rng(0).standard_normal(n_vocab).astype(np.float32)
    rec = LogitsRecorder()
    t0 = time.perf_counter()
    for i in range(steps):
        cand.logit[:] = rec(None, cand.logit)  # the write-back llama-cpp-python does
        rec.logprob(i % n_vocab)
    return (time.perf_counter() - t0) / steps * 1e6


def first_token_s(llm: Llama, prompt: list[int]) -> float:
    gen = generate_once(llm, prompt, max_tokens=1, temperature=0.0, seed=0, reuse_cache=False, confidence=False)
    return gen.first_token_at - gen.started_at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (each: one plain, one with confidence)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--no-logits-all", action="store_true", help="skip the logits_all=True comparison")
    args = ap.parse_args()

    path = str(check_model_file(default_model_path()))
    threads = default_threads()
    n_ctx = 512
    print(f"model   {path}")
    print(f"setup   {threads} threads, n_ctx {n_ctx}, {args.rounds} rounds x {args.tokens} tokens, temperature 0")
    load_avg = os.getloadavg()[0]
    if load_avg > 0.5:
        print(f"warning: load average {load_avg:.1f} before starting; other work will add noise")
    llm = load(path, logits_all=False, n_ctx=n_ctx, threads=threads)
    prompt = ChatPrompter(llm).tokens(GenerationRequest.from_prompt(PROMPT))
    run(llm, prompt, 8, confidence=False)  # warm caches
    ttft_plain = statistics.median(first_token_s(llm, prompt) for _ in range(3))
    n_vocab = llm.n_vocab()
    run(llm, prompt, 8, confidence=False)  # the prompt's KV prefix, reused by every run below

    plain: list[float] = []
    measured: list[float] = []
    reference = None
    confidence = None
    for i in range(args.rounds):
        # Alternate which goes first so drift (thermal, other load) hits both alike.
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_conf in order:
            gen = run(llm, prompt, args.tokens, confidence=with_conf)
            (measured if with_conf else plain).append(gen.decode_tokens_per_s)
            if reference is None:
                reference = gen.token_ids
            elif gen.token_ids != reference:
                raise SystemExit("the confidence recorder changed the generated tokens")
            if with_conf:
                confidence = (gen.confidence, gen.min_token_prob)
        print(
            f"round {i + 1}/{args.rounds}  plain {plain[-1]:6.1f} tok/s   with confidence {measured[-1]:6.1f} tok/s",
            flush=True,
        )
    llm.close()

    # Headline: best of N per mode (noise only ever slows a run down) and the median of
    # per-round ratios (both runs of a round share the machine's state of the moment).
    plain_tps, conf_tps = max(plain), max(measured)
    ratio = statistics.median(c / p for p, c in zip(plain, measured))
    cost_pct = (1.0 - ratio) * 100.0
    print(f"plain            best {plain_tps:6.1f} tok/s  (median {statistics.median(plain):.1f}, min {min(plain):.1f})")
    print(f"with confidence  best {conf_tps:6.1f} tok/s  (median {statistics.median(measured):.1f}, min {min(measured):.1f})")
    print(f"cost             {cost_pct:+.1f}% of tokens/s, median of per-round ratios (target < {TARGET_COST_PCT:.0f}%)"
          f"  -> {'OK' if cost_pct < TARGET_COST_PCT else 'OVER TARGET'}")
    step_us = recorder_step_us(n_vocab)
    step_pct = step_us / (1e6 / plain_tps) * 100.0
    print(f"recorder alone   {step_us:.0f} us per token on a {n_vocab}-token row = {step_pct:.1f}% of a token at"
          f" {plain_tps:.0f} tok/s")
    print(f"confidence       {confidence[0]:.3f} (min token prob {confidence[1]:.3f}) on this prompt")

    result = {
        "model": path.rsplit("/", 1)[-1],
        "threads": threads,
        "rounds": args.rounds,
        "load_avg_at_start": round(load_avg, 2),
        "tokens_per_run": args.tokens,
        "plain_tokens_per_s": round(plain_tps, 2),
        "confidence_tokens_per_s": round(conf_tps, 2),
        "plain_tokens_per_s_median": round(statistics.median(plain), 2),
        "confidence_tokens_per_s_median": round(statistics.median(measured), 2),
        "ratio": round(ratio, 4),
        "cost_pct": round(cost_pct, 2),
        "recorder_us_per_token": round(step_us, 1),
        "recorder_pct_of_token_time": round(step_pct, 2),
        "first_token_s_fresh_prompt": round(ttft_plain, 4),
        "prompt_tokens": len(prompt),
        "confidence": round(confidence[0], 4),
        "min_token_prob": round(confidence[1], 4),
    }

    if not args.no_logits_all:
        print("logits_all=True: loading a second instance for three runs ...", flush=True)
        slow = load(path, logits_all=True, n_ctx=n_ctx, threads=threads)
        run(slow, prompt, 8, confidence=False)
        ttft_slow = statistics.median(first_token_s(slow, prompt) for _ in range(3))
        run(slow, prompt, 8, confidence=False)
        la_tps = max(run(slow, prompt, args.tokens, confidence=False).decode_tokens_per_s for _ in range(3))
        slow.close()
        print(f"logits_all=True  best {la_tps:6.1f} tok/s decode of 3 runs"
              f"  ({plain_tps / la_tps:.2f}x slower than plain)")
        print(f"                 first token on a fresh {len(prompt)}-token prompt {ttft_slow * 1000:.0f} ms"
              f" (plain {ttft_plain * 1000:.0f} ms, {ttft_slow / ttft_plain:.2f}x)")
        result["logits_all_tokens_per_s"] = round(la_tps, 2)
        result["logits_all_first_token_s_fresh_prompt"] = round(ttft_slow, 4)
        result["logits_all_slowdown"] = round(plain_tps / la_tps, 2)

    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
