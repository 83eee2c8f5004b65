"""The engine process: one model, served to the peer that spawned it over a socket pair.

Run by ``mesh.inference.engine_backend`` as ``python -m mesh.inference.engine_main --fd
N --model PATH ...`` (spawned, never forked: a fork would copy the peer's ZeroMQ and
asyncio state into a process that then loads a C library that may crash). Protocol:
``mesh.inference.engine_wire``.

Threads: the main thread does everything with the model (load, warm-up, every request;
see ``ModelRunner``). A reader thread only reads frames: it queues requests for the main
thread and sets a request's stop event when the peer cancels it. When the peer goes
away (end of file on the socket) every request is stopped and the process exits.

Text is coalesced here as in ``mesh.inference.coalesce``: the first piece of an answer
is sent at once, later ones when ``--chunk-window-s`` has passed since the last send (or
at the end), so the peer wakes a few times per answer rather than once per token.

The runner keeps a prompt cache per session (``mesh.inference.session_cache``, sized by
``--session-cache-bytes`` and ``--session-cache-sessions``); each ``done`` frame carries
the prompt tokens that request evaluated and the cache's counters.

An ``embed`` request is answered by the runner's embedding context
(``mesh.inference.embedder``), opened on the first one and closed again when the engine
has been idle (no request for ``IDLE_CHECK_S``) past its keep time.

Exit codes: 0 asked to exit or the peer went away; 3 the model cannot be served (a
``fail`` frame said why). Anything else (a signal) is a crash the peer restarts from.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from mesh.api import request_from_ask_args
from mesh.errors import MeshError, ModelError
from mesh.inference import engine_wire as wire
from mesh.inference.embedding import EmbeddingRequest
from mesh.inference.session_cache import SessionCacheConfig

EXIT_MODEL_ERROR = 3
# Fault injection for tests and chaos runs: ``MESH_ENGINE_FAULT=segv-at:warming`` (or
# ``:loading``, ``:variant``, ``:ready``) makes the engine kill itself with a real SIGSEGV
# when it reaches that phase, as llama.cpp's crashing kernels do.
FAULT_ENV = "MESH_ENGINE_FAULT"
IDLE_CHECK_S = 30.0  # with no request for this long, the runner frees what it does not use (ModelRunner.idle)

log = logging.getLogger("mesh.engine")


class Channel:
    """Frames over a blocking socket; ``send`` may be called from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()

    def send(self, msg: dict) -> None:
        data = wire.encode(msg)
        with self._send_lock:
            self._sock.sendall(data)

    def recv(self) -> dict | None:
        """The next frame, or None at end of file."""
        return wire.recv_frame(self._sock)


class TextBatcher:
    """Hold answer text for at most ``window_s`` after the last send (first piece at once)."""

    def __init__(self, send, *, window_s: float, clock=time.monotonic) -> None:
        self._send = send
        self._window_s = window_s
        self._clock = clock
        self._held: list[str] = []
        self._held_lp: list = []  # logprob entries of the held text's tokens (they go with it)
        self._last = float("-inf")

    def add(self, text: str) -> None:
        self._held.append(text)
        if self._clock() - self._last >= self._window_s:
            self.flush()

    def add_logprobs(self, entries: list) -> None:
        self._held_lp.extend(entries)

    def flush(self) -> None:
        if self._held or self._held_lp:
            self._send("".join(self._held), self._held_lp)
            self._held, self._held_lp = [], []
            self._last = self._clock()


def _text_frame(rid: int, text: str, logprobs: list) -> dict:
    return {"t": "text", "id": rid, "s": text, **({"lp": logprobs} if logprobs else {})}


def _reader(channel: Channel, inbox: queue.Queue, stops: dict[int, threading.Event], lock: threading.Lock) -> None:
    while True:
        try:
            msg = channel.recv()
        except (OSError, wire.EngineProtocolError) as e:
            log.error("engine: reading from the peer failed: %s", e)
            msg = None
        op = msg.get("op") if msg is not None else "exit"
        if op in ("gen", "embed") and isinstance(msg.get("id"), int):
            with lock:
                stops[msg["id"]] = threading.Event()
            inbox.put(msg)
        elif op == "cancel":
            with lock:
                ev = stops.get(msg.get("id"))
            if ev is not None:
                ev.set()
        else:  # "exit", end of file, or garbage: stop everything and leave
            with lock:
                for ev in stops.values():
                    ev.set()
            inbox.put({"op": "exit"})
            return


def serve(channel: Channel, runner, *, window_s: float) -> None:
    """Answer requests until the peer says exit or goes away."""
    inbox: queue.Queue = queue.Queue()
    stops: dict[int, threading.Event] = {}
    lock = threading.Lock()
    threading.Thread(target=_reader, args=(channel, inbox, stops, lock), name="engine-reader", daemon=True).start()
    while True:
        try:
            msg = inbox.get(timeout=IDLE_CHECK_S)
        except queue.Empty:
            runner.idle()  # nothing asked for a while: free what is unused (an embedding context)
            continue
        if msg.get("op") not in ("gen", "embed"):
            return
        rid = msg["id"]
        with lock:
            stop = stops[rid]
        if msg["op"] == "embed":
            _embed(channel, runner, rid, msg, stop)
            with lock:
                stops.pop(rid, None)
            channel.send({"t": "done", "id": rid, "n": 0, "p": 0, "cache": runner.sessions.stats()})
            continue
        batcher = TextBatcher(lambda s, lp, rid=rid: channel.send(_text_frame(rid, s, lp)), window_s=window_s)
        generated = evaluated = 0
        try:
            request = request_from_ask_args(msg.get("req") if isinstance(msg.get("req"), dict) else {})
            outcome = runner.run(request, admitted_at=time.perf_counter(), stop=stop, on_text=batcher.add,
                                 on_logprobs=batcher.add_logprobs)
            generated, evaluated = outcome.generated, outcome.prompt_evaluated
            if outcome.stats is not None:
                batcher.flush()
                channel.send({"t": "final", "id": rid, "stats": wire.stats_to_wire(outcome.stats)})
        except MeshError as e:
            channel.send({"t": "error", "id": rid, "code": getattr(e, "code", "generation_failed"), "msg": str(e)})
        except Exception as e:  # not silent: reported to the peer as a failed generation
            log.exception("engine: generation failed")
            channel.send({"t": "error", "id": rid, "code": "generation_failed", "msg": f"generation failed: {e!r}"})
        finally:
            with lock:
                stops.pop(rid, None)
            channel.send({"t": "done", "id": rid, "n": generated, "p": evaluated, "cache": runner.sessions.stats()})


def _embed(channel: Channel, runner, rid: int, msg: dict, stop: threading.Event) -> None:
    """One embedding request: ``vec`` frames (one per group of inputs, in order), then
    ``embedded`` with the tokens evaluated; or ``error``."""
    try:
        request = EmbeddingRequest.from_wire(msg.get("req"))
        tokens = runner.embed(request.texts, stop=stop, on_vectors=lambda i, vs: channel.send(
            {"t": "vec", "id": rid, "i": i, "v": vs}))
        if tokens is not None:
            channel.send({"t": "embedded", "id": rid, "n": tokens})
    except MeshError as e:
        channel.send({"t": "error", "id": rid, "code": getattr(e, "code", "generation_failed"), "msg": str(e)})
    except Exception as e:  # not silent: reported to the peer as a failed request
        log.exception("engine: embedding failed")
        channel.send({"t": "error", "id": rid, "code": "generation_failed", "msg": f"embedding failed: {e!r}"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mesh-engine", description="mesh's engine process (started by mesh-peer)")
    ap.add_argument("--fd", type=int, required=True, help="socket to the peer")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-ctx", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--queue-limit", type=int, required=True)
    ap.add_argument("--warmup-tokens", type=int, default=8)
    ap.add_argument("--chunk-window-s", type=float, default=0.05)
    ap.add_argument("--session-cache-bytes", type=int, default=SessionCacheConfig().budget_bytes)
    ap.add_argument("--session-cache-sessions", type=int, default=SessionCacheConfig().max_sessions)
    ap.add_argument("--rpc", action="append", default=[],
                    help="a ggml RPC server (127.0.0.1:PORT, a tunnel's local port) for a split model; repeatable")
    ap.add_argument("--remote-layers", type=int, default=0, help="slots on the --rpc servers (n_gpu_layers)")
    ap.add_argument("--tensor-split", default="", help="slots per --rpc server, comma separated")
    args = ap.parse_args(argv)
    split = None
    if args.rpc:
        from mesh.inference.engine import SplitArgs

        shares = tuple(float(x) for x in args.tensor_split.split(",")) if args.tensor_split else ()
        split = SplitArgs(tuple(args.rpc), args.remote_layers, shares or tuple(1.0 for _ in args.rpc))
    sessions = SessionCacheConfig(budget_bytes=args.session_cache_bytes, max_sessions=args.session_cache_sessions)
    faulthandler.enable()  # a segfault in llama.cpp prints the Python stack to stderr (the peer keeps it)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    channel = Channel(socket.socket(fileno=args.fd))

    fault = os.environ.get(FAULT_ENV, "")

    def phase(name: str, detail: str = "") -> None:
        channel.send({"t": "phase", "phase": name, "detail": detail})
        if fault == f"segv-at:{name}":
            os.kill(os.getpid(), signal.SIGSEGV)

    from mesh.inference.cpu_variant import ensure_cpu_variant

    try:
        phase("variant")
        variant = ensure_cpu_variant()
        phase("loading", f"{Path(args.model).name}, CPU variant {variant.name}, {args.threads} threads")
        from mesh.inference.model_runner import ModelRunner

        runner = ModelRunner(Path(args.model), n_ctx=args.n_ctx, n_threads=args.threads, queue_limit=args.queue_limit,
                             session_cache=sessions, split=split)
        if args.warmup_tokens > 0:
            phase("warming")
            runner.warm_up(args.warmup_tokens)
    except ModelError as e:
        channel.send({"t": "fail", "code": "model_error", "msg": str(e)})
        return EXIT_MODEL_ERROR
    import llama_cpp

    if fault == "segv-at:ready":
        os.kill(os.getpid(), signal.SIGSEGV)
    channel.send({
        "t": "ready",
        "caps": wire.caps_to_wire(runner.caps),
        "engine": {
            **variant.to_wire(),
            "threads": args.threads,
            "pid": os.getpid(),
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            "llama_cpp_python": llama_cpp.__version__,
        },
    })
    try:
        serve(channel, runner, window_s=args.chunk_window_s)
    finally:
        runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
