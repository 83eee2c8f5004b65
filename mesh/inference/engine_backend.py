"""``EngineBackend``: llama.cpp in an engine process of its own, supervised by the peer.

A crash of llama.cpp (the AMX kernels segfault on some Intel CPUs; the OOM killer; a
bug) costs the requests in flight, never the peer: its gossip, jobs, HTTP API and RPC
server live in the peer process, the model in a child spawned with ``python -m
mesh.inference.engine_main`` (protocol: ``mesh.inference.engine_wire``).

Shape::

    stream() (any event loop)         reader thread (one per engine)     engine process
      validate, admit or BackendBusy
      idle engine: send "gen" ------------------------------------------>  generate
      await job.out  <-- call_soon_threadsafe --  "text" / "final"  <-----
                                                  "done": free the slot,
                                                  send the next "gen"
      closed early: send "cancel" -------------------------------------->  stops within a token
                                                  end of file: tell the supervisor

    supervisor thread: spawn -> (reader reports ready) -> wait for end of file or close
                       -> fail requests in flight -> after_exit() -> back-off -> spawn

- One generation at a time (``parallel`` 1); up to ``queue_limit`` more wait in FIFO
  order, then ``BackendBusy``. Closing a stream early stops the engine's generation
  within a token; a request still waiting never reaches the engine.
- When the engine dies, the request it was generating ends with ``GenerationError``
  ("generation_failed" on the wire, which the router answers by retrying on another
  peer) and waiting ones with ``BackendBusy``; new ones get ``BackendBusy`` ("engine
  restarting") until it is back, or ``GenerationError`` once it has failed for good.
- Restart policy (``mesh.inference.restarts``): back-off; no restart for a model that
  cannot load, none after repeated crashes before ready. ``status()`` says which, in
  words, with a hint from the CPU and the build.
- Time to first token and total time in ``FinalStats`` are measured here, from the
  moment the request was admitted, so they include any wait in the queue.
- Sessions: a request's ``session`` travels in the ``gen`` frame; the engine keeps each
  session's prompt cache (``mesh.inference.session_cache``, sized by ``session_cache``)
  and reports its counters with every ``done`` frame; ``status().session_cache`` shows
  the latest, ``prompt_tokens_evaluated`` sums what the engine evaluated.
- Loop-agnostic (like ``LlamaBackend``): its threads own the process; callers on any
  event loop stream from it. ``start()`` waits for the first attempt's outcome (ready
  or an exit), and never raises for an engine that fails: the peer runs without a model.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from mesh.api import ask_args
from mesh.errors import (
    BackendBusy,
    Cancelled,
    ConfigError,
    GenerationError,
    InvalidRequest,
    MeshError,
    ModelError,
    error_from_wire,
)
from mesh.inference import engine_wire as wire
from mesh.inference.backend import (
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    TextChunk,
    ewma,
)
from mesh.inference.cpu_variant import cpu_summary
from mesh.inference.embedding import EmbeddingRequest, Embeddings, check_vectors, collect_embeddings
from mesh.inference.logprobs import entries_from_wire
from mesh.inference.models import check_model_file, model_info
from mesh.inference.restarts import EngineExit, RestartConfig, RestartDecision, after_exit, crash_hint
from mesh.inference.session_cache import SessionCacheConfig, stats_from_wire

log = logging.getLogger("mesh.engine")

DEFAULT_RESTART = RestartConfig()
OUTPUT_LINES_KEPT = 40  # the engine's last output lines, logged when it dies
EXIT_WAIT_S = 5.0  # an engine asked to exit that has not after this is killed
PLAN_RETRY_S = 5.0  # a split model that could not be planned (or whose engine failed) plans again after this
_DONE = object()  # posted last on every job's queue: the job holds the engine no more
_PHASE_WORDS = {"variant": "choosing CPU kernels", "loading": "loading model", "warming": "warming up"}


class _Job:
    """One request (a generation or an embedding). ``state`` (under the backend lock):
    waiting -> running -> done."""

    def __init__(self, request: GenerationRequest | EmbeddingRequest, rid: int, admitted_at: float) -> None:
        self.request = request
        self.rid = rid
        self.admitted_at = admitted_at
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.state = "waiting"

    def post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody listens any more
            pass


class _Engine:
    """One engine process and the socket to it."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, number: int) -> None:
        self.proc = proc
        self.sock = sock
        self.number = number
        self.phase = "spawn"
        self.failed: str | None = None
        self.ready_at: float | None = None
        self.send_lock = threading.Lock()

    def send(self, msg: dict) -> bool:
        """Best effort: False when the engine is gone (its reader reports that)."""
        data = wire.encode(msg)
        with self.send_lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False


class EngineBackend:
    """The llama.cpp ``Backend`` of a peer: see the module docstring."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int,
        n_threads: int,
        queue_limit: int,
        warmup_tokens: int = 8,
        chunk_window_s: float = 0.05,
        session_cache: SessionCacheConfig | None = None,
        restart: RestartConfig = DEFAULT_RESTART,
        on_progress: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        model_name: str | None = None,
        prepare: Callable[[], list[str]] | None = None,
        plan_retry_s: float = PLAN_RETRY_S,
    ) -> None:
        """``model_name``: the name to serve it under (a model store's blob is named by its
        hash on disk); default, from the file name. ``prepare``: called (on the supervisor
        thread) before each engine start, returns more engine arguments: a split model's
        plan (``mesh.inference.borrowing``). When it raises ``MeshError`` the engine waits,
        saying why, and asks again after ``plan_retry_s``; and an engine that fails or dies
        is always started again, through a new plan (its lenders may be what failed)."""
        if n_ctx < 16:
            raise ConfigError(f"n_ctx must be at least 16 tokens, got {n_ctx}")
        if queue_limit < 0:
            raise ConfigError(f"queue_limit must be >= 0, got {queue_limit}")
        if n_threads < 1:
            raise ConfigError(f"n_threads must be >= 1, got {n_threads}")
        self._unusable: str | None = None
        try:
            self._path = check_model_file(model_path)
        except ModelError as e:  # no engine could load it: the peer runs without a model and says why
            self._path, self._unusable = Path(model_path), str(e)
        self._args = [
            "--model", str(self._path), "--n-ctx", str(n_ctx), "--threads", str(n_threads),
            "--queue-limit", str(queue_limit), "--warmup-tokens", str(warmup_tokens),
            "--chunk-window-s", str(chunk_window_s),
        ]
        sessions = session_cache if session_cache is not None else SessionCacheConfig()
        self._args += ["--session-cache-bytes", str(sessions.budget_bytes),
                       "--session-cache-sessions", str(sessions.max_sessions)]
        self._restart = restart
        self._prepare = prepare
        self.plan_retry_s = plan_retry_s
        self._on_progress = on_progress
        self._clock = clock
        self._python = python
        self._env = env
        info = model_info({}, self._path)
        self._model_name = model_name
        self._caps = Capabilities(
            model=self._model_name or info.name, parameters=info.parameters, quantisation=info.quantisation, context_length=n_ctx,
            tokens_per_s=0.0, parallel=1, queue_limit=queue_limit,
            extra={"engine": "llama.cpp", "n_threads": n_threads},
        )
        self._queue_limit = queue_limit
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: _Job | None = None
        self._engine: _Engine | None = None  # the live engine, once ready
        self._state = EngineStatus(state="starting", reason="the engine is starting")
        self._build: dict = {}
        self._pid: int | None = None
        self._ids = itertools.count(1)
        self._started = 0
        self._generated = 0
        self._evaluated = 0
        self._session_cache: dict = {}  # the engine's latest counters (a new engine starts at 0)
        self._restarts = 0
        self._crashes = 0
        self._closed = False
        self._events: queue.Queue = queue.Queue()  # to the supervisor: ("eof", engine) | ("close",)
        self._first_outcome = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.output_tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)

    # -- lifecycle

    def start_blocking(self) -> None:
        """Spawn the engine; return once it is ready or its first attempt ended."""
        if self._unusable is not None:
            self._state = EngineStatus(state="failed", reason=f"the engine cannot load the model: {self._unusable}")
            log.error("engine: %s", self._state.reason)
            return
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="mesh-engine-supervisor", daemon=True)
            self._supervisor.start()
        self._first_outcome.wait()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    async def aclose(self) -> None:
        """Refuse new work, stop the engine; requests in flight end ``Cancelled``."""
        with self._lock:
            self._closed = True
            jobs = list(self._waiting) + ([self._running] if self._running is not None else [])
            self._waiting.clear()
            self._running = None
            for job in jobs:
                job.state = "done"
        for job in jobs:
            job.post(Cancelled("the backend closed while this request was in flight"))
            job.post(_DONE)
        self._events.put(("close",))
        if self._supervisor is not None:
            await asyncio.to_thread(self._supervisor.join)

    # -- Backend protocol

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def load(self) -> Load:
        return Load(running=self.running, waiting=self.waiting)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def status(self) -> EngineStatus:
        return dataclasses.replace(self._state, restarts=self._restarts, pid=self._pid, engine=dict(self._build),
                                   session_cache=dict(self._session_cache))

    @property
    def started_count(self) -> int:
        """Requests handed to the engine since construction (warm-ups excluded)."""
        return self._started

    @property
    def tokens_generated(self) -> int:
        """Tokens the engine generated for requests, stopped ones included (its own count)."""
        return self._generated

    @property
    def prompt_tokens_evaluated(self) -> int:
        """Prompt tokens the engine evaluated for requests (not found in a cache), its own count."""
        return self._evaluated

    @property
    def crashes(self) -> int:
        """Engine processes that died without being asked to."""
        return self._crashes

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        request.validate()
        job = self._admit(request)
        first_at: float | None = None
        try:
            while True:
                item = await job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TextChunk):
                    first_at = self._clock() if first_at is None else first_at
                elif isinstance(item, FinalStats):
                    end = self._clock()
                    item = dataclasses.replace(
                        item,
                        model=self._caps.model,
                        time_to_first_token_s=max(0.0, (first_at if first_at is not None else end) - job.admitted_at),
                        generation_s=max(0.0, end - job.admitted_at),
                    )
                yield item
        finally:
            await self._abandon(job)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embed ``request.texts`` in the engine (it opens its embedding context on the
        first one: ``mesh.inference.embedder``). Queued with generations, one request at a
        time; the same errors as ``stream``."""
        request.validate()
        job = self._admit(request)
        try:
            vectors, tokens = await collect_embeddings(job.out, _DONE)
        finally:
            await self._abandon(job)
        if tokens is None:
            raise GenerationError("the engine ended an embedding without its vectors")
        try:
            return Embeddings(check_vectors(vectors, count=len(request.texts)), model=self._caps.model,
                              prompt_tokens=tokens)
        except ValueError as e:
            raise GenerationError(f"the engine sent bad vectors: {e}") from None

    # -- admission and dispatch (any thread, under the lock)

    def _admit(self, request: GenerationRequest | EmbeddingRequest) -> _Job:
        with self._lock:
            if self._closed:
                raise Cancelled("the backend is closed")
            if self._engine is None:
                st = self._state
                if st.state == "failed":
                    raise GenerationError(f"this peer has no model: {st.reason}")
                raise BackendBusy(f"engine {st.state}: {st.reason}; try again shortly or ask another peer")
            admitted = len(self._waiting) + (1 if self._running is not None else 0)
            if admitted >= 1 + self._queue_limit:
                raise BackendBusy(
                    f"backend busy: 1 generation running and {len(self._waiting)} waiting "
                    f"(queue limit {self._queue_limit}); try again later or ask another peer"
                )
            job = _Job(request, next(self._ids), self._clock())
            self._waiting.append(job)
            self._dispatch_locked()
            return job

    def _dispatch_locked(self) -> None:
        """Hand the oldest waiting job to an idle, ready engine."""
        engine = self._engine
        if engine is None or self._running is not None or not self._waiting:
            return
        job = self._waiting.popleft()
        job.state = "running"
        self._running = job
        self._started += 1
        if isinstance(job.request, EmbeddingRequest):
            engine.send({"op": "embed", "id": job.rid, "req": job.request.to_wire()})
        else:  # a dead engine: its reader says so
            engine.send({"op": "gen", "id": job.rid, "req": ask_args(job.request)})

    async def _abandon(self, job: _Job) -> None:
        """Runs when a stream ends for any reason; returns once the job holds no slot."""
        with self._lock:
            if job.state == "done":
                return
            if job.state == "waiting":
                self._waiting.remove(job)
                job.state = "done"
                return
            engine = self._engine
        if engine is not None:
            engine.send({"op": "cancel", "id": job.rid})  # the engine stops after this token
        while await job.out.get() is not _DONE:
            pass

    def _finish_locked(self, job: _Job, *items) -> None:
        job.state = "done"
        if self._running is job:
            self._running = None
        for item in items:
            job.post(item)
        job.post(_DONE)

    # -- the reader thread: frames from one engine process

    def _read(self, engine: _Engine) -> None:
        try:
            while True:
                try:
                    msg = wire.recv_frame(engine.sock)
                except wire.EngineProtocolError as e:
                    log.error("engine: %s; stopping it", e)
                    engine.proc.kill()
                    return
                if msg is None:
                    return
                self._on_frame(engine, msg)
        finally:
            with self._lock:  # from now on new requests are refused, not sent to a dead engine
                if self._engine is engine:
                    self._engine = None
                    self._state = EngineStatus(state="restarting", reason="the engine process exited")
            self._events.put(("eof", engine))

    def _on_frame(self, engine: _Engine, msg: dict) -> None:
        t = msg.get("t")
        if t == "phase":
            engine.phase = str(msg.get("phase", engine.phase))
            detail = msg.get("detail") or ""
            self._progress(_PHASE_WORDS.get(engine.phase, engine.phase) + (f" ({detail})" if detail else ""))
            return
        if t == "ready":
            try:
                caps = wire.caps_from_wire(msg.get("caps"))
            except wire.EngineProtocolError as e:
                log.error("engine: %s; stopping it", e)
                engine.proc.kill()
                return
            build = msg.get("engine") if isinstance(msg.get("engine"), dict) else {}
            if self._model_name:  # the engine names the model from its file; this peer serves it by this name
                caps = dataclasses.replace(caps, model=self._model_name)
            engine.phase, engine.ready_at = "ready", self._clock()
            with self._lock:
                self._caps, self._build = caps, build
                self._engine = engine
                self._state = EngineStatus(state="ready")
                self._dispatch_locked()
            self._progress(
                f"ready: {caps.model} {caps.quantisation}, {caps.tokens_per_s:.0f} tokens/s, CPU variant "
                f"{build.get('variant', '?')}, {build.get('threads', '?')} threads, pid {engine.proc.pid}"
            )
            self._first_outcome.set()
            return
        if t == "fail":
            engine.failed = str(msg.get("msg") or "the engine could not load the model")
            return
        with self._lock:
            job = self._running
            if job is None or job.rid != msg.get("id") or engine is not self._engine:
                return  # a request already ended (its caller left, or the backend closed)
            if t == "text":
                s = msg.get("s")
                try:
                    lp = entries_from_wire(msg["lp"]) if "lp" in msg else []
                except GenerationError as e:
                    job.post(e)
                    return
                if isinstance(s, str) and (s or lp):
                    job.post(TextChunk(s, tuple(lp)))
            elif t == "final":
                try:
                    stats = wire.stats_from_wire(msg.get("stats"))
                except wire.EngineProtocolError as e:
                    job.post(GenerationError(str(e)))
                else:
                    if stats.tokens_per_s > 0:
                        self._caps = dataclasses.replace(self._caps,
                                                         tokens_per_s=ewma(self._caps.tokens_per_s, stats.tokens_per_s))
                    job.post(stats)
            elif t == "vec":
                v = msg.get("v")
                if isinstance(v, list) and all(isinstance(x, bytes) for x in v):
                    job.post(v)
                else:
                    job.post(GenerationError("the engine sent vectors that are not float32 arrays"))
            elif t == "embedded":
                n = msg.get("n")
                ok = isinstance(n, int) and not isinstance(n, bool) and n >= 0
                job.post(n if ok else GenerationError("the engine sent a bad token count"))
            elif t == "error":
                text = str(msg.get("msg", ""))
                err = error_from_wire(str(msg.get("code", "generation_failed")), text)
                job.post(err if isinstance(err, (InvalidRequest, GenerationError, BackendBusy)) else GenerationError(text))
            elif t == "done":
                n = msg.get("n")
                if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= getattr(job.request, "max_tokens", 0) + 1:
                    self._generated += n
                p = msg.get("p")
                if isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= self._caps.context_length:
                    self._evaluated += p
                cache = stats_from_wire(msg.get("cache"))
                if cache is not None:
                    self._session_cache = cache
                self._finish_locked(job)
                self._dispatch_locked()

    # -- the supervisor thread

    def _progress(self, message: str) -> None:
        log.info("engine: %s", message)
        if self._on_progress is not None:
            self._on_progress(message)

    def _supervise(self) -> None:
        history: list[EngineExit] = []
        numbers = itertools.count(1)
        while True:
            extra: list[str] = []
            if self._prepare is not None:
                try:
                    extra = self._prepare()
                except MeshError as e:
                    with self._lock:
                        self._state = EngineStatus(state="waiting", reason=str(e))
                    log.warning("engine: waiting: %s; planning again in %g s", e, self.plan_retry_s)
                    self._first_outcome.set()
                    if self._wait_or_close(self.plan_retry_s):
                        return
                    continue
            engine = self._spawn(next(numbers), extra)
            if engine is None:
                ex = EngineExit("spawn", None, failed=f"could not start {self._python}")
            else:
                ex = self._watch(engine)
                if ex is None:  # closed
                    return
            if ex.failed is None:
                self._crashes += 1
            if ex.ready_for_s >= self._restart.stable_after_s:
                history.clear()
            history.append(ex)
            decision = after_exit(tuple(history), self._restart)
            if self._prepare is not None and not decision.restart:  # a split: a new plan may well do
                history.clear()
                decision = RestartDecision(True, self.plan_retry_s,
                                           f"{decision.reason}; planning the split again in {self.plan_retry_s:g} s")
            if ex.failed is None and self.output_tail:
                log.warning("engine: it died (%s); its last lines:\n  %s", ex.how,
                            "\n  ".join(list(self.output_tail)[-12:]))
            if decision.restart:
                self._restarts += 1
                self._set_down(EngineStatus(state="restarting", reason=decision.reason), ex)
                log.warning("engine: %s", decision.reason)
            else:
                reason = decision.reason
                if ex.failed is None:
                    reason += "; " + crash_hint(variant=self._build.get("variant"), cpu_amx=cpu_summary()["amx"])
                self._set_down(EngineStatus(state="failed", reason=reason), ex)
                log.error("engine: %s", reason)
            self._first_outcome.set()
            deadline = time.monotonic() + decision.delay_s
            while True:  # back off (or, failed, wait for close); a close ends it at once
                remaining = deadline - time.monotonic()
                if decision.restart and remaining <= 0:
                    break
                try:
                    ev = self._events.get(timeout=remaining if decision.restart else None)
                except queue.Empty:
                    break
                if ev[0] == "close":
                    return

    def _set_down(self, status: EngineStatus, ex: EngineExit) -> None:
        """Say why the engine is down, then end what it held: the status is in place by
        the time a caller sees its request fail."""
        with self._lock:
            self._state = status
            self._engine = None
            job = self._running
            if job is not None:
                self._finish_locked(job, GenerationError(
                    f"the engine process died ({ex.how}) while generating this answer; the peer restarts it"
                ))
            waiting = list(self._waiting)
            self._waiting.clear()
            for job in waiting:
                self._finish_locked(job, BackendBusy(f"engine {status.state}: {status.reason}; ask another peer"))

    def _wait_or_close(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the backend was closed meanwhile."""
        try:
            ev = self._events.get(timeout=seconds)
        except queue.Empty:
            return False
        return ev[0] == "close"

    def _spawn(self, number: int, extra: list[str] = ()) -> _Engine | None:
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [self._python, "-m", "mesh.inference.engine_main", "--fd", str(child.fileno()), *self._args,
                 *extra],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=self._env,
            )
        except OSError as e:
            log.error("engine: could not start %s: %s", self._python, e)
            parent.close()
            return None
        finally:
            child.close()
        engine = _Engine(proc, parent, number)
        self._pid = proc.pid
        threading.Thread(target=self._keep_output, args=(proc,), name="mesh-engine-output", daemon=True).start()
        threading.Thread(target=self._read, args=(engine,), name="mesh-engine-reader", daemon=True).start()
        return engine

    def _watch(self, engine: _Engine) -> EngineExit | None:
        """Wait for ``engine`` to end (an exit) or for a close (None)."""
        while True:
            ev = self._events.get()
            if ev[0] == "close":
                engine.send({"op": "exit"})
                try:
                    engine.proc.wait(EXIT_WAIT_S)
                except subprocess.TimeoutExpired:
                    engine.proc.kill()
                    engine.proc.wait()
                engine.sock.close()
                self._pid = None
                return None
            if ev[0] == "eof" and ev[1] is engine:
                break
        rc = engine.proc.wait()
        engine.sock.close()
        self._pid = None
        ex = EngineExit(engine.phase, rc, failed=engine.failed,
                        ready_for_s=(self._clock() - engine.ready_at) if engine.ready_at is not None else 0.0)
        return ex

    def _keep_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            self.output_tail.append(text)
            log.debug("engine[%s]: %s", proc.pid, text)
        proc.stdout.close()
