"""``LlamaBackend``: llama.cpp in-process (llama-cpp-python), one generation at a time.

Shape::

    stream() (event loop)                      worker thread "mesh-llama"
      validate, admit or BackendBusy
      format + tokenize (to_thread), fit check
      enqueue job  --------------------------->  pop the oldest waiting job
      await job.out  <-- call_soon_threadsafe --  generate_once(): TextChunk ... FinalStats
      finally: abandon (stop event / dequeue)    release the slot, post _DONE

- A llama context is not thread safe, so exactly one thread (the worker) touches it for
  generation; ``parallel`` is 1. Up to ``queue_limit`` more requests wait in FIFO order;
  beyond that ``stream()`` raises ``BackendBusy`` at its first ``__anext__``.
- Closing the stream early or cancelling its consumer sets the job's ``threading.Event``;
  the worker checks it after every token, so generation stops within one token. A job
  still waiting is removed from the queue and never runs. Either way the stream's
  ``finally`` returns only once the slot is free.
- Confidence is measured while generating by ``LogitsRecorder`` (a logits processor);
  ``logits_all`` stays False (``logits_all=True`` costs about 6x tokens/s).
- Prompt + ``max_tokens`` must fit the context (``n_ctx``): a request that does not is
  refused with ``InvalidRequest`` rather than silently given fewer tokens, so the Router
  can send it to a peer with a larger context.
- A seeded request evaluates its prompt from scratch so the same seed gives the same
  text; unseeded requests reuse the KV cache for the prompt prefix they share with the
  previous one, and draw their sampling seed from the injected ``rng``.
- llama.cpp failures map to ``ModelError`` (loading) and ``GenerationError`` (generating).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import dataclasses
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import jinja2
import llama_cpp
import psutil
from llama_cpp import Llama, LogitsProcessorList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from mesh.errors import BackendBusy, Cancelled, ConfigError, GenerationError, InvalidRequest, ModelError
from mesh.inference.backend import Capabilities, FinalStats, GenerationRequest, TextChunk
from mesh.inference.confidence import ConfidenceMeter, LogitsRecorder
from mesh.inference.models import check_model_file, default_model_path, model_info

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 2048
DEFAULT_QUEUE_LIMIT = 8
WARMUP_PROMPT = "Say hello."
TOP_K = 40  # llama.cpp's default; sampling steps the request does not name keep their defaults
MIN_P = 0.05
TPS_EWMA_ALPHA = 0.2  # weight of the newest request in Capabilities.tokens_per_s

# Used only when a GGUF carries no chat template (base models): ChatML.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# ---------------------------------------------------------------- one generation (sync)


@dataclass(frozen=True)
class Generation:
    """What ``generate_once`` produced. Times are readings of the injected clock."""

    token_ids: tuple[int, ...]  # completion tokens, end-of-generation token excluded
    logprobs: tuple[float, ...]  # one per token_ids entry; empty when confidence is off
    finish_reason: str  # "stop" (end-of-generation token), "length" (max_tokens), "cancelled"
    confidence: float  # geometric mean of chosen-token probabilities, the EOG token included
    min_token_prob: float
    started_at: float
    first_token_at: float | None
    last_token_at: float | None

    @property
    def decode_tokens_per_s(self) -> float:
        """Completion tokens per second after the first one (prompt evaluation excluded)."""
        n = len(self.token_ids)
        if n < 2 or self.first_token_at is None or self.last_token_at is None:
            return 0.0
        dt = self.last_token_at - self.first_token_at
        return (n - 1) / dt if dt > 0 else 0.0


class TokenTextDecoder:
    """Token ids to text, incrementally: bytes of a UTF-8 character split across tokens
    are held back until the character is complete (invalid bytes become U+FFFD)."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._piece(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class _Pieces:
    """``token -> bytes`` through ``llama_token_to_piece``, growing the buffer on demand
    (llama-cpp-python's own detokenize asserts on pieces longer than 32 bytes)."""

    def __init__(self, vocab) -> None:
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(64)

    def __call__(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:
            self._buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[: max(n, 0)]


def generate_once(
    llm: Llama,
    prompt_tokens: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int,
    reuse_cache: bool = True,
    confidence: bool = True,
    stop: threading.Event | None = None,
    on_text: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Generation:
    """Drive ``Llama.generate`` token by token; the one loop the backend, its warm-up and
    the benchmark share. Blocking: call it from the thread that owns ``llm``.

    Stops on an end-of-generation token ("stop"), after ``max_tokens`` ("length"), or
    when ``stop`` is set ("cancelled", checked after every token, text of that token not
    emitted). ``on_text`` receives decoded text as it completes. With ``confidence``, a
    ``LogitsRecorder`` supplies each chosen token's log-probability. Engine failures
    raise ``GenerationError``.
    """
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    decoder = TokenTextDecoder(_Pieces(vocab))
    recorder = LogitsRecorder() if confidence else None
    meter = ConfidenceMeter()
    ids: list[int] = []
    logprobs: list[float] = []
    finish = "length"
    first_at = last_at = None
    yielded = 0
    llm.set_seed(seed)
    if not reuse_cache:
        llm.reset()
    started_at = clock()
    tokens = llm.generate(
        list(prompt_tokens),
        temp=temperature,
        top_p=top_p,
        top_k=TOP_K,
        min_p=MIN_P,
        repeat_penalty=1.0,
        logits_processor=LogitsProcessorList([recorder]) if recorder is not None else None,
    )
    try:
        for token in tokens:
            now = clock()
            yielded += 1
            if stop is not None and stop.is_set():
                finish = "cancelled"
                break
            if recorder is not None:
                # ctypes swallows exceptions raised in the processor: a missed step is
                # the only trace of one, and would pair a token with the wrong row.
                if recorder.steps != yielded:
                    raise GenerationError(f"confidence recorder saw {recorder.steps} steps for {yielded} tokens")
                lp = recorder.logprob(token)
                meter.add(lp)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            ids.append(token)
            if recorder is not None:
                logprobs.append(lp)
            first_at = now if first_at is None else first_at
            last_at = now
            text = decoder.feed(token)
            if text and on_text is not None:
                on_text(text)
            if len(ids) >= max_tokens:
                break
    except (RuntimeError, ValueError, OSError, IndexError) as e:
        raise GenerationError(f"llama.cpp failed while generating: {e}") from e
    finally:
        tokens.close()
    tail = decoder.flush()
    if tail and on_text is not None and finish != "cancelled":
        on_text(tail)
    return Generation(
        token_ids=tuple(ids),
        logprobs=tuple(logprobs),
        finish_reason=finish,
        confidence=meter.confidence,
        min_token_prob=meter.min_token_prob,
        started_at=started_at,
        first_token_at=first_at,
        last_token_at=last_at,
    )


class ChatPrompter:
    """Messages -> prompt tokens, through the GGUF's own chat template."""

    def __init__(self, llm: Llama) -> None:
        self._llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            log.warning("model has no chat template in its metadata; using ChatML")
            template = _CHATML
        self._bos = llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llm.token_eos()),
            bos_token=self._token_text(self._bos),
            add_generation_prompt=True,
        )
        self._add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" and self._bos >= 0

    def _token_text(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def tokens(self, request: GenerationRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            prompt = self._formatter(messages=messages).prompt
        except (jinja2.TemplateError, ValueError) as e:
            raise InvalidRequest(f"the model's chat template refused these messages: {e}") from e
        try:
            # Special tokens are parsed so the template's role markers become real tokens.
            ids = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        except RuntimeError as e:
            raise InvalidRequest(f"the prompt could not be tokenized: {e}") from e
        if self._add_bos and (not ids or ids[0] != self._bos):
            ids.insert(0, self._bos)  # the template left out a BOS the model expects
        return ids


def ewma(previous: float, sample: float, alpha: float = TPS_EWMA_ALPHA) -> float:
    """Exponentially weighted moving average; the first sample (previous <= 0) is taken as is."""
    return sample if previous <= 0 else alpha * sample + (1 - alpha) * previous


def default_threads() -> int:
    """Physical cores (llama.cpp gains nothing from hyper-threads), else logical CPUs."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


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
        self.prompt: list[int] = []
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
    ``await LlamaBackend.load(...)``. ``on_progress`` receives short human-readable
    steps ("loading model ...", "warming up", "ready ...") from the constructing thread.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        warmup_tokens: int = 8,
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

        path = check_model_file(default_model_path() if model_path is None else model_path)
        self._progress(f"loading model {path.name} ({path.stat().st_size / 1e6:.0f} MB, {threads} threads)")
        self._llm = _load(path, n_ctx=n_ctx, n_threads=threads)
        try:
            self._prompter = ChatPrompter(self._llm)
            info = model_info(self._llm.metadata, path, n_params=llama_cpp.llama_model_n_params(self._llm.model))
            self._caps = Capabilities(
                model=info.name,
                parameters=info.parameters,
                quantisation=info.quantisation,
                context_length=self._llm.n_ctx(),
                tokens_per_s=0.0,
                parallel=1,
                queue_limit=queue_limit,
                extra={"engine": "llama.cpp", "trained_context_length": info.context_length, "n_threads": threads},
            )
            if warmup_tokens > 0:
                self._progress("warming up")
                self._warm_up(warmup_tokens)
        except BaseException:
            self._llm.close()
            raise
        self._progress(f"ready: {info.name} {info.quantisation}, {self._caps.tokens_per_s:.0f} tokens/s")

        self._lock = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: _Job | None = None
        self._admitted = 0  # preparing + waiting + running
        self._started = 0
        self._closed = False
        self._freed = False
        self._thread = threading.Thread(target=self._worker_main, name="mesh-llama", daemon=True)
        self._thread.start()

    @classmethod
    async def load(cls, model_path: str | os.PathLike | None = None, **kwargs) -> "LlamaBackend":
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
            job.prompt = await asyncio.to_thread(self._prompter.tokens, request)
            self._check_fits(len(job.prompt), request.max_tokens)
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
        await asyncio.to_thread(self._thread.join)
        if not self._freed:
            self._freed = True
            self._llm.close()

    # -- load, for schedulers and tests

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

    # -- internals

    def _progress(self, message: str) -> None:
        log.info("%s", message)
        if self._on_progress is not None:
            self._on_progress(message)

    def _warm_up(self, n_tokens: int) -> None:
        prompt = self._prompter.tokens(GenerationRequest.from_prompt(WARMUP_PROMPT))
        try:
            gen = generate_once(
                self._llm, prompt, max_tokens=n_tokens, temperature=0.0, seed=0, reuse_cache=False, clock=self._clock
            )
        except GenerationError as e:
            raise ModelError(f"the model loaded but could not generate: {e}") from e
        self._caps = dataclasses.replace(self._caps, tokens_per_s=gen.decode_tokens_per_s)

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

    def _check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        n_ctx = self._caps.context_length
        if prompt_tokens + max_tokens > n_ctx:
            room = n_ctx - prompt_tokens
            hint = f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt"
            raise InvalidRequest(
                f"prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: together more than "
                f"this model's context of {n_ctx} tokens; {hint}"
            )

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

    def _worker_main(self) -> None:
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
        request = job.request
        seed = request.seed if request.seed is not None else self._rng.randrange(0, 0xFFFFFFFF)
        try:
            gen = generate_once(
                self._llm,
                job.prompt,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed,
                reuse_cache=request.seed is None,
                stop=job.stop,
                on_text=lambda text: job.post(TextChunk(text)),
                clock=self._clock,
            )
        except GenerationError as e:
            job.post(e)
            return
        except Exception as e:  # not silent: logged and reported, and the worker lives on
            log.exception("llama generation failed")
            job.post(GenerationError(f"generation failed: {e!r}"))
            return
        if gen.finish_reason == "cancelled":
            if job.closed_by_backend:
                job.post(Cancelled("the backend closed while generating this answer"))
            return
        end = gen.last_token_at if gen.last_token_at is not None else self._clock()
        first = gen.first_token_at if gen.first_token_at is not None else end
        tps = gen.decode_tokens_per_s
        if tps > 0:
            self._caps = dataclasses.replace(self._caps, tokens_per_s=ewma(self._caps.tokens_per_s, tps))
        job.post(
            FinalStats(
                model=self._caps.model,
                prompt_tokens=len(job.prompt),
                completion_tokens=len(gen.token_ids),
                confidence=gen.confidence,
                min_token_prob=gen.min_token_prob,
                finish_reason=gen.finish_reason,
                time_to_first_token_s=max(0.0, first - job.admitted_at),
                generation_s=max(0.0, end - job.admitted_at),
                tokens_per_s=tps,
            )
        )


def _load(path: Path, *, n_ctx: int, n_threads: int) -> Llama:
    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,  # must stay False: True costs about 6x tokens/s
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise ModelError(
            f"llama.cpp could not load model {path}: {e}; check that it is a complete GGUF model of an "
            f"architecture llama-cpp-python {llama_cpp.__version__} supports, or pass --model PATH"
        ) from e
