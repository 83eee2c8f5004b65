"""Time to first token of a conversation's turns 1..8, with and without the session
prompt cache, on one engine, in one run.

    .venv/bin/python bench/session_cache.py [--rounds 3] [--turns 8] [--tokens 48]

One real engine process (``EngineBackend``, what a peer runs its model in) on the
default model. A conversation of ``--turns`` turns: each turn's prompt is the history
so far (every earlier question and the answer the model gave) and a new question, put
through the model's chat template by the engine as for any request. Between two of its
turns another conversation takes a turn, so the context never holds the previous turn
when the next arrives and llama.cpp's reuse of the last request's prefix cannot help.

- baseline: no session id (what a request gets without sticky-session reuse): each
  turn evaluates its whole, growing history.
- reuse: both conversations carry a session id (fresh ones per round); the engine keeps
  each one's context between turns and evaluates only what a turn adds.

Greedy (temperature 0), ``--tokens`` answer tokens, so the answers, hence the prompts,
are the same in both modes, except where batching moves a near-tie in greedy decoding
(``same_prompts`` says whether they matched; on this machine one turn-4 answer comes out
8 tokens shorter with the cache, so later reuse prompts are 8 tokens shorter). Rounds alternate
the order (baseline first, then reuse first, ...). Time to first token is measured by
the caller from sending the request to the first text; per turn the median over rounds.
Reported: each mode's turn-5 / turn-1 ratio (flat means the fifth turn starts answering
about as fast as the first), and reuse / baseline per turn. The prompt tokens the
engine evaluated per turn (its own count) say why.

Prints a readable report with progress, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh.inference.backend import FinalStats, GenerationRequest, Message, TextChunk  # noqa: E402
from mesh.inference.engine import default_threads  # noqa: E402
from mesh.inference.engine_backend import EngineBackend  # noqa: E402
from mesh.inference.models import default_model_path  # noqa: E402

QUESTIONS = (
    "I am planning a small vegetable garden. Which vegetables are easy for a beginner?",
    "How much sun do tomatoes need each day?",
    "What about watering: how often should I water them?",
    "Which pests should I watch out for?",
    "How can I keep them away without chemicals?",
    "When is the right time to harvest the tomatoes?",
    "Can I save seeds from them for next year?",
    "Summarise the plan we made in three short points.",
)
OTHER = (
    "Tell me a fact about the moon.",
    "Why does it have craters?",
    "How far away is it?",
    "Who walked on it first?",
    "Could people live there?",
    "What is its gravity like?",
    "Does it have water?",
    "What causes its phases?",
)


def say(msg: str) -> None:
    print(msg, flush=True)


class Conversation:
    def __init__(self, questions: tuple[str, ...], session: str | None) -> None:
        self.questions = questions
        self.session = session
        self.history: list[Message] = []

    async def turn(self, backend: EngineBackend, n: int, max_tokens: int) -> dict:
        messages = (*self.history, Message("user", self.questions[n % len(self.questions)]))
        request = GenerationRequest(messages=messages, max_tokens=max_tokens, temperature=0.0, session=self.session)
        evaluated_before = backend.prompt_tokens_evaluated
        started = time.perf_counter()
        first_at, parts, final = None, [], None
        async for item in backend.stream(request):
            if isinstance(item, TextChunk):
                first_at = time.perf_counter() if first_at is None else first_at
                parts.append(item.text)
            elif isinstance(item, FinalStats):
                final = item
        assert final is not None
        answer = "".join(parts)
        self.history = [*messages, Message("assistant", answer)]
        ttft = (first_at if first_at is not None else time.perf_counter()) - started
        return {"ttft_s": ttft, "prompt_tokens": final.prompt_tokens,
                "evaluated": backend.prompt_tokens_evaluated - evaluated_before, "answer": answer}


async def one_run(backend: EngineBackend, mode: str, rnd: int, turns: int, max_tokens: int) -> list[dict]:
    reuse = mode == "reuse"
    main = Conversation(QUESTIONS, f"garden-{rnd}" if reuse else None)
    other = Conversation(OTHER, f"moon-{rnd}" if reuse else None)
    out = []
    for n in range(turns):
        out.append(await main.turn(backend, n, max_tokens))
        await other.turn(backend, n, max_tokens)  # takes the context between two of main's turns
        r = out[-1]
        say(f"    {mode:8} round {rnd + 1} turn {n + 1}: ttft {r['ttft_s'] * 1000:7.1f} ms, "
            f"prompt {r['prompt_tokens']:4} tokens, evaluated {r['evaluated']:4}")
    return out


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("nan")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48, help="answer tokens per turn")
    ap.add_argument("--threads", type=int, default=default_threads())
    args = ap.parse_args()
    if args.turns < 5:
        ap.error("--turns must be at least 5 (the report compares turn 5 with turn 1)")

    say(f"session cache bench: {args.turns} turns, {args.rounds} rounds, {args.tokens} answer tokens, "
        f"one engine process ({args.threads} threads)")
    backend = EngineBackend(default_model_path(), n_ctx=2048, n_threads=args.threads, queue_limit=2,
                            on_progress=lambda m: say(f"  engine: {m}"))
    await backend.start()
    if not backend.status().serving:
        raise SystemExit(f"the engine did not start: {backend.status().reason}")
    runs: dict[str, list[list[dict]]] = {"baseline": [], "reuse": []}
    try:
        for rnd in range(args.rounds):
            order = ("baseline", "reuse") if rnd % 2 == 0 else ("reuse", "baseline")
            for mode in order:
                say(f"  round {rnd + 1}/{args.rounds}: {mode}")
                runs[mode].append(await one_run(backend, mode, rnd, args.turns, args.tokens))
        cache = backend.status().session_cache
    finally:
        await backend.aclose()

    same_prompts = all(
        [t["prompt_tokens"] for t in b] == [t["prompt_tokens"] for t in r]
        for b in runs["baseline"] for r in runs["reuse"]
    )
    ttft = {m: [statistics.median(run[n]["ttft_s"] for run in runs[m]) for n in range(args.turns)] for m in runs}
    evaluated = {m: [runs[m][0][n]["evaluated"] for n in range(args.turns)] for m in runs}
    prompt = [runs["baseline"][0][n]["prompt_tokens"] for n in range(args.turns)]
    t5 = {m: ratio(ttft[m][4], ttft[m][0]) for m in runs}
    per_turn = [ratio(ttft["reuse"][n], ttft["baseline"][n]) for n in range(args.turns)]

    say("")
    say("time to first token per turn (median over rounds), and prompt tokens evaluated")
    say(f"  {'turn':>4}  {'prompt':>6}  {'baseline ms':>11} {'eval':>5}  {'reuse ms':>9} {'eval':>5}  {'reuse/base':>10}")
    for n in range(args.turns):
        say(f"  {n + 1:>4}  {prompt[n]:>6}  {ttft['baseline'][n] * 1000:>11.1f} {evaluated['baseline'][n]:>5}  "
            f"{ttft['reuse'][n] * 1000:>9.1f} {evaluated['reuse'][n]:>5}  {per_turn[n]:>10.3f}")
    say(f"turn 5 / turn 1: baseline {t5['baseline']:.2f}, reuse {t5['reuse']:.2f}")
    say(f"same prompts in both modes: {same_prompts}; engine's session cache: {cache}")
    print(json.dumps({
        "bench": "session_cache", "turns": args.turns, "rounds": args.rounds, "answer_tokens": args.tokens,
        "threads": args.threads, "same_prompts": same_prompts, "prompt_tokens": prompt,
        "ttft_s": {m: [round(x, 4) for x in v] for m, v in ttft.items()},
        "evaluated": evaluated,
        "turn5_over_turn1": t5,
        "reuse_over_baseline": per_turn,
        "session_cache": cache,
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
