"""``LlamaBackend``: llama.cpp in this process (llama-cpp-python), one generation at a time.

A peer runs its model in an engine process of its own (``mesh.inference.engine_backend``);
this in-process backend serves ``mesh ask --embedded``, the engine process itself is
built on the same ``ModelRunner``, and the conformance suite runs against both.

Shape::

    stream() (event loop)                      worker thread "mesh-llama"
                                                 load the model, warm up (ModelRunner)
      validate, admit or BackendBusy
      enqueue job  --------------------------->  pop the oldest waiting job
                                                 tokenize, fit check, generate
      await job.out  <-- call_soon_threadsafe --  TextChunk ... FinalStats
      finally: abandon (stop event / dequeue)    release the slot, post _DONE

- Every call into the model comes from the worker thread, from loading to closing:
  llama.cpp's OpenMP thread team is tied to the thread that first computes, and a
  model warmed up on one thread and run on another generated at a third of the speed.
- ``parallel`` is 1. Up to ``queue_limit`` more requests wait in FIFO order; beyond
  that ``stream()`` raises ``BackendBusy`` at its first ``__anext__``.
- Closing the stream early or cancelling its consumer sets the job's ``threading.Event``;
  the worker checks it after every token, so generation stops within one token. A job
  still waiting is removed from the queue and never runs. Either way the stream's
  ``finally`` returns only once the slot is free.
- Confidence is measured while generating by ``LogitsRecorder`` (a logits processor);
  ``logits_all`` stays False.
- Prompt + ``max_tokens`` must fit the context (``n_ctx``): a request that does not is
  refused with ``InvalidRequest`` rather than silently given fewer tokens.
- A seeded request evaluates its prompt from scratch so the same seed gives the same
  text; unseeded requests reuse the KV cache for the prompt prefix they share with the
  previous one, and draw their sampling seed from the injected ``rng``.
- A request with a ``session`` reuses that session's saved context when it helps, even
  after other requests came in between (``mesh.inference.session_cache``, within
  ``session_cache``'s RAM budget); ``status().session_cache`` holds its counters.
- llama.cpp failures map to ``ModelError`` (loading) and ``GenerationError`` (generating).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from mesh.errors import (
    BackendBusy,
    Cancelled,
    ConfigError,
    GenerationError,
    MeshError,
)
from mesh.inference.backend import (
    READY,
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    TextChunk,
    ewma,
)
from mesh.inference.embedding import EmbeddingRequest, Embeddings, collect_embeddings
from mesh.inference.engine import default_threads
from mesh.inference.model_runner import WARMUP_PROMPT, ModelRunner
from mesh.inference.models import check_model_file, default_model_path
from mesh.inference.session_cache import SessionCacheConfig

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 2048
DEFAULT_QUEUE_LIMIT = 8

__all__ = ["DEFAULT_N_CTX", "DEFAULT_QUEUE_LIMIT", "LlamaBackend", "WARMUP_PROMPT", "ewma"]


# ---------------------------------------------------------------- the backend (async)

_DONE = object()  # posted last on every job's queue: the slot is free


class _Job:
    """One request's passage through the backend. ``state`` is guarded by the backend lock:
    preparing -> waiting -> running -> done (or straight to done when abandoned)."""

    def __init__(self, request: GenerationRequest, admitted_at: float) -> None:
        self.request = request
        self.admitted_at = admitted_at
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()
        self.state = "preparing"
        self.closed_by_backend = False

    def post(self, item) -> None:
        """Hand ``item`` to the consumer's event loop (callable from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.stop.set()


class LlamaBackend:
    """The llama.cpp ``Backend``. See the module docstring for the contract it keeps.

    Construction is blocking (file check, model load, warm-up); from async code use
    ``await LlamaBackend.create(...)``. ``on_progress`` receives short human-readable
    steps ("loading model ...", "warming up", "ready ...") from the worker thread.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        warmup_tokens: int = 8,
        session_cache: SessionCacheConfig | None = None,
        on_progress: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
    ) -> None:
        if n_ctx < 16:
            raise ConfigError(f"n_ctx must be at least 16 tokens, got {n_ctx}")
        if queue_limit < 0:
            raise ConfigError(f"queue_limit must be >= 0, got {queue_limit}")
        threads = n_threads if n_threads is not None else default_threads()
        if threads < 1:
            raise ConfigError(f"n_threads must be >= 1, got {threads}")
        self._on_progress = on_progress
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._queue_limit = queue_limit
        self._session_cache = session_cache

        self._lock = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: _Job | None = None
        self._admitted = 0  # preparing + waiting + running
        self._started = 0
        self._closed = False
        self._caps: Capabilities | None = None
        self._runner: ModelRunner | None = None
        self._load_error: BaseException | None = None
        ready = threading.Event()

        path = check_model_file(default_model_path() if model_path is None else model_path)
        self._thread = threading.Thread(
            target=self._worker_main, args=(path, n_ctx, threads, warmup_tokens, ready), name="mesh-llama",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    @classmethod
    async def create(cls, model_path: str | os.PathLike | None = None, **kwargs) -> "LlamaBackend":
        """Construct off the event loop (loading takes a moment)."""
        return await asyncio.to_thread(cls, model_path, **kwargs)

    # -- Backend protocol

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        request.validate()
        job = self._admit(request)
        try:
            self._enqueue(job)
            while True:
                item = await job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await self._abandon(job)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embed ``request.texts`` on the worker thread (``ModelRunner.embed``), queued
        with generations."""
        request.validate()
        job = self._admit(request)
        try:
            self._enqueue(job)
            vectors, tokens = await collect_embeddings(job.out, _DONE)
        finally:
            await self._abandon(job)
        if tokens is None:
            raise GenerationError("the embedding ended without its vectors")
        return Embeddings(tuple(vectors), model=self._caps.model, prompt_tokens=tokens)

    async def aclose(self) -> None:
        """Refuse new work, cancel waiting requests, stop the running one, free the model."""
        with self._lock:
            dropped = [] if self._closed else list(self._waiting)
            self._closed = True
            self._waiting.clear()
            for job in dropped:
                job.state = "done"
                self._admitted -= 1
            running = self._running
            if running is not None:
                running.closed_by_backend = True
                running.stop.set()
            self._lock.notify_all()
        for job in dropped:
            job.post(Cancelled("the backend closed before this request started"))
            job.post(_DONE)
        await asyncio.to_thread(self._thread.join)  # the worker frees the model as it ends

    # -- load, for schedulers and tests

    def status(self) -> EngineStatus:
        runner = self._runner
        return READY if runner is None else EngineStatus(session_cache=runner.sessions.stats())

    def load(self) -> Load:
        return Load(running=self.running, waiting=self.waiting)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def started_count(self) -> int:
        """Requests that began generating since construction (the warm-up excluded)."""
        return self._started

    @property
    def prompt_tokens_evaluated(self) -> int:
        """Prompt tokens llama.cpp evaluated for requests (not found in a cache), warm-up excluded."""
        return self._runner.prompt_tokens_evaluated if self._runner is not None else 0

    # -- internals

    def _progress(self, message: str) -> None:
        log.info("%s", message)
        if self._on_progress is not None:
            self._on_progress(message)

    def _admit(self, request: GenerationRequest) -> _Job:
        with self._lock:
            if self._closed:
                raise Cancelled("the backend is closed")
            if self._admitted >= 1 + self._queue_limit:
                raise BackendBusy(
                    f"backend busy: 1 generation running and {len(self._waiting)} waiting "
                    f"(queue limit {self._queue_limit}); try again later or ask another peer"
                )
            self._admitted += 1
            return _Job(request, self._clock())

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise Cancelled("the backend closed before this request started")
            job.state = "waiting"
            self._waiting.append(job)
            self._lock.notify_all()

    async def _abandon(self, job: _Job) -> None:
        """Runs when a stream ends for any reason; returns once the job holds no slot."""
        with self._lock:
            if job.state == "done":
                return
            if job.state in ("preparing", "waiting"):
                if job.state == "waiting":
                    self._waiting.remove(job)
                job.state = "done"
                self._admitted -= 1
                self._lock.notify_all()
                return
            job.stop.set()  # running: the worker stops after the current token
        while await job.out.get() is not _DONE:
            pass

    def _worker_main(self, path: Path, n_ctx: int, threads: int, warmup_tokens: int, ready: threading.Event) -> None:
        """The one thread that touches the model: load, warm up, serve, free."""
        try:
            self._progress(f"loading model {path.name} ({path.stat().st_size / 1e6:.0f} MB, {threads} threads)")
            runner = ModelRunner(
                path, n_ctx=n_ctx, n_threads=threads, queue_limit=self._queue_limit,
                session_cache=self._session_cache, clock=self._clock, rng=self._rng,
            )
            try:
                if warmup_tokens > 0:
                    self._progress("warming up")
                    runner.warm_up(warmup_tokens)
            except BaseException:
                runner.close()
                raise
        except BaseException as e:  # handed to the constructor, which raises it
            self._load_error = e
            ready.set()
            return
        self._runner = runner
        self._caps = runner.caps
        self._progress(f"ready: {runner.caps.model} {runner.caps.quantisation}, {runner.caps.tokens_per_s:.0f} tokens/s")
        ready.set()
        try:
            self._serve()
        finally:
            runner.close()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._running = job
                self._started += 1
            try:
                self._run(job)
            finally:
                with self._lock:
                    job.state = "done"
                    self._running = None
                    self._admitted -= 1
                    self._lock.notify_all()
                job.post(_DONE)

    def _run(self, job: _Job) -> None:
        assert self._runner is not None
        try:
            if isinstance(job.request, EmbeddingRequest):
                tokens = self._runner.embed(job.request.texts, stop=job.stop, on_vectors=lambda i, vs: job.post(vs))
                if tokens is not None:
                    job.post(tokens)
                return
            outcome = self._runner.run(
                job.request, admitted_at=job.admitted_at, stop=job.stop, on_text=lambda text: job.post(TextChunk(text)),
                on_logprobs=lambda entries: job.post(TextChunk("", tuple(entries))),
            )
        except MeshError as e:  # InvalidRequest (does not fit), GenerationError
            job.post(e)
            return
        except Exception as e:  # not silent: logged and reported, and the worker lives on
            log.exception("llama generation failed")
            job.post(GenerationError(f"generation failed: {e!r}"))
            return
        self._caps = self._runner.caps
        if outcome.stats is None:
            if job.closed_by_backend:
                job.post(Cancelled("the backend closed while generating this answer"))
            return
        job.post(outcome.stats)
