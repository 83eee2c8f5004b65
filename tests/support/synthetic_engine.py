"""A synthetic OpenAI-compatible engine with a declared speed, for routing benchmarks.

Real models on this two-core machine cannot differ in speed by a chosen factor (two
llama.cpp processes fight over the same cores), so ``bench/routing.py`` puts real
``mesh-peer`` processes in front of engines that *declare* their speed: a peer serves
through one with ``--engine-url`` exactly as it would through llama-server or Ollama.

What it does, like a one-slot llama-server (``-np 1``):

- ``POST /v1/chat/completions`` with ``stream: true``: requests run one at a time in
  arrival order; each first "evaluates" its prompt (prompt tokens = characters / 4, at
  ``prefill`` times the decode speed), then sends ``max_tokens`` tokens at ``tps`` tokens
  per second as SSE chunks, with ``logprobs`` when asked (a fixed per-token log
  probability, so the peer measures a confidence) and ``usage`` when asked, then
  ``data: [DONE]``. A client that disconnects stops its generation at the next token.
- ``GET /v1/models`` names the model; ``GET /stats`` counts requests and tokens served.
- Anything else in the request (non-streaming, no messages) is a 400 with a message.

Run as a process (prints ``port N`` once listening)::

    python tests/support/synthetic_engine.py --tps 80 [--port 0] [--model synthetic]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from aiohttp import web

CHARS_PER_TOKEN = 4
TOKEN_LOGPROB = -0.05  # every token's log probability: confidence about 0.95


class SyntheticEngine:
    def __init__(self, *, tps: float, model: str = "synthetic", prefill: float = 10.0) -> None:
        if tps <= 0 or prefill <= 0:
            raise ValueError("tps and prefill must be positive")
        self.tps, self.model, self.prefill = tps, model, prefill
        self._slot = asyncio.Lock()  # one generation at a time, FIFO (asyncio.Lock is fair)
        self.requests = 0
        self.tokens = 0
        self.cancelled = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "tokens": self.tokens, "cancelled": self.cancelled,
                                  "tps": self.tps})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not body.get("stream"):
            return _error(400, "this engine serves streamed chat completions with messages only")
        max_tokens = body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            return _error(400, "max_tokens must be 1..4096")
        prompt_tokens = max(1, sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
                            // CHARS_PER_TOKEN)
        want_logprobs = bool(body.get("logprobs"))
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        cid = f"chatcmpl-{self.requests}"
        self.requests += 1
        sent = 0
        try:
            async with self._slot:
                await asyncio.sleep(prompt_tokens / (self.tps * self.prefill))
                next_at = time.perf_counter()
                for i in range(max_tokens):
                    next_at += 1.0 / self.tps
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    text = " word" if i else "Word"
                    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                    if want_logprobs:
                        choice["logprobs"] = {"content": [{"token": text, "logprob": TOKEN_LOGPROB, "bytes": None,
                                                           "top_logprobs": []}]}
                    await _send(response, {"id": cid, "object": "chat.completion.chunk", "model": self.model,
                                           "choices": [choice]})
                    sent += 1
                    self.tokens += 1
                await _send(response, {"id": cid, "object": "chat.completion.chunk", "model": self.model,
                                       "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                if want_usage:
                    await _send(response, {"id": cid, "object": "chat.completion.chunk", "model": self.model,
                                           "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                                    "completion_tokens": sent,
                                                                    "total_tokens": prompt_tokens + sent}})
                await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1  # the peer closed the stream: stop generating
            raise
        return response


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


async def serve(engine: SyntheticEngine, host: str, port: int) -> None:
    runner = web.AppRunner(engine.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"port {bound}", flush=True)
    await asyncio.Event().wait()


class EngineProcess:
    """One synthetic engine in a process of its own (so its timers do not share a loop
    or a GIL with the benchmark's client): ``with EngineProcess(tps=80) as e: e.base_url``."""

    def __init__(self, *, tps: float, model: str = "synthetic", prefill: float = 10.0) -> None:
        self.tps, self.model = tps, model
        self._args = [sys.executable, __file__, "--tps", str(tps), "--model", model, "--prefill", str(prefill)]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> EngineProcess:
        self.proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"the synthetic engine did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tps", type=float, required=True, help="decode speed, tokens per second")
    p.add_argument("--prefill", type=float, default=10.0, help="prompt evaluation speed as a multiple of --tps")
    p.add_argument("--model", default="synthetic")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(SyntheticEngine(tps=args.tps, model=args.model, prefill=args.prefill), args.host,
                          args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
