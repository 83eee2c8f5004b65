"""One generation with llama.cpp, synchronously: the token loop, text decoding, chat
prompts and model loading. Blocking code for the thread that owns a ``Llama``; the
scheduling around it (queue, worker thread, async streaming) is ``mesh.inference.llama``.

- Confidence is measured while generating by ``LogitsRecorder`` (a logits processor);
  ``logits_all`` stays False.
- Request options: stop sequences end the answer before them (``StopScanner``, text that
  could begin one held back); per-token log-probabilities come from the same recorder's
  last row (``LogprobAligner`` sends each token's entry with its text); a grammar (GBNF
  text, checked by ``mesh.inference.output_format``) constrains sampling.
- A context's key/value state can be copied out and back in (``snapshot_sequence``,
  ``restore_sequence``): the session cache (``mesh.inference.session_cache``) keeps a
  conversation's state between its turns this way.
- A model whose GGUF has no chat template (a base model, such as Gemma 3 270M) is
  prompted with a plain question/answer transcript, and its answer ends at the end of
  its first line of text (``ChatPrompter.base_model``, ``generate_once``'s
  ``ends_at_line_break``): a base model has no end-of-turn token, and ChatML's markers,
  unknown to its vocabulary, made it echo the prompt.
- llama.cpp failures map to ``ModelError`` (loading) and ``GenerationError`` (generating).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import llama_cpp
from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from mesh.errors import GenerationError, InvalidRequest, ModelError
from mesh.inference.backend import GenerationRequest
from mesh.inference.confidence import ConfidenceMeter, LogitsRecorder
from mesh.inference.cpu_variant import default_threads  # noqa: F401  (re-exported: benches and tests use it here)
from mesh.inference.logprobs import LogprobAligner, entry
from mesh.inference.stops import StopScanner

log = logging.getLogger(__name__)

TOP_K = 40  # llama.cpp's default; sampling steps the request does not name keep their defaults
MIN_P = 0.05

# Used only when a GGUF carries no chat template (base models): a plain transcript, which
# a base model continues with an answer on the "Answer:" line (and then, left alone, with
# more questions of its own: generation ends at that line's end).
_TRANSCRIPT = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Answer: ' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


# ---------------------------------------------------------------- one generation (sync)


@dataclass(frozen=True)
class Generation:
    """What ``generate_once`` produced. Times are readings of the injected clock."""

    token_ids: tuple[int, ...]  # completion tokens, end-of-generation token excluded
    logprobs: tuple[float, ...]  # one per token_ids entry; empty when confidence is off
    finish_reason: str  # "stop" (end-of-generation token, or line break), "length" (max_tokens), "cancelled"
    confidence: float  # geometric mean of chosen-token probabilities, the EOG (or line break) token included
    min_token_prob: float
    started_at: float
    first_token_at: float | None
    last_token_at: float | None
    prompt_evaluated: int = 0  # prompt tokens llama.cpp evaluated (the rest came from the KV cache)

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
    ends_at_line_break: bool = False,
    stops: Sequence[str] = (),
    top_logprobs: int | None = None,
    on_logprobs: Callable[[list], None] | None = None,
    grammar: str | None = None,
) -> Generation:
    """Drive ``Llama.generate`` token by token; the one loop the backend, its warm-up and
    the benchmark share. Blocking: call it from the thread that owns ``llm``.

    Stops on an end-of-generation token ("stop"), after ``max_tokens`` ("length"), or
    when ``stop`` is set ("cancelled", checked after every token, text of that token not
    emitted). With ``ends_at_line_break`` (a base model's transcript), leading blank
    space is dropped and the first line break after some text is an end too ("stop"):
    the text before it in that token is emitted, the token counted and its probability
    in the confidence, like an end-of-generation token's. ``on_text`` receives decoded
    text as it completes. With ``confidence``, a ``LogitsRecorder`` supplies each chosen
    token's log-probability. Engine failures raise ``GenerationError``.
    ``prompt_evaluated`` counts the prompt tokens evaluated rather than found in the
    context (``CountingLlama``'s count at the first token; 0 for a plain ``Llama``).

    ``stops``: the answer ends before the first of these ("stop"); text that could begin
    one is held back. ``top_logprobs`` (not None): each token's log-probability entry
    (``mesh.inference.logprobs``), with that many alternatives, goes to ``on_logprobs``
    just before the text it belongs to goes to ``on_text``. ``grammar``: GBNF text that
    constrains sampling (checked by the caller: ``output_format.grammar_text``).
    """
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    pieces = _Pieces(vocab)
    decoder = TokenTextDecoder(pieces)
    want_lp = top_logprobs is not None
    recorder = LogitsRecorder() if confidence or want_lp else None
    scanner = StopScanner(stops) if stops else None
    aligner = LogprobAligner() if want_lp else None
    fed = 0  # characters of answer text fed to the scanner
    stopped = False  # a stop sequence ended the answer

    def send(text: str, upto: int, *, last: bool = False) -> None:
        if aligner is not None and on_logprobs is not None:
            entries = aligner.release(upto) + (aligner.rest() if last else [])
            if entries:
                on_logprobs(entries)
        if text and on_text is not None:
            on_text(text)

    meter = ConfidenceMeter()
    ids: list[int] = []
    logprobs: list[float] = []
    finish = "length"
    first_at = last_at = None
    answered = cut = False  # ends_at_line_break: some non-blank text emitted yet; ended at a line break
    yielded = 0
    evaluated = 0
    llm.set_seed(seed)
    if not reuse_cache:
        llm.reset()
    evaluated_before = getattr(llm, "evaluated", 0)
    started_at = clock()
    tokens = llm.generate(
        list(prompt_tokens),
        temp=temperature,
        top_p=top_p,
        top_k=TOP_K,
        min_p=MIN_P,
        repeat_penalty=1.0,
        logits_processor=LogitsProcessorList([recorder]) if recorder is not None else None,
        grammar=LlamaGrammar.from_string(grammar) if grammar else None,
    )
    try:
        for token in tokens:
            now = clock()
            yielded += 1
            if yielded == 1:
                evaluated = getattr(llm, "evaluated", 0) - evaluated_before
            if stop is not None and stop.is_set():
                finish = "cancelled"
                break
            if recorder is not None:
                # ctypes swallows exceptions raised in the processor: a missed step is
                # the only trace of one, and would pair a token with the wrong row.
                if recorder.steps != yielded:
                    raise GenerationError(f"confidence recorder saw {recorder.steps} steps for {yielded} tokens")
                lp = recorder.logprob(token)
                if confidence:
                    meter.add(lp)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            ids.append(token)
            if recorder is not None:
                logprobs.append(lp)
            if aligner is not None:
                top = [(pieces(t), tlp) for t, tlp in recorder.top(top_logprobs)] if top_logprobs else []
                aligner.add(fed, entry(pieces(token), lp, top))
            first_at = now if first_at is None else first_at
            last_at = now
            text = decoder.feed(token)
            if ends_at_line_break:
                if not answered:
                    text = text.lstrip()
                    answered = bool(text)
                if "\n" in text:
                    text, cut, finish = text[: text.index("\n")], True, "stop"
            fed += len(text)
            if scanner is not None:
                text, stopped = scanner.feed(text)
            send(text, scanner.released if scanner is not None else fed)
            if stopped:
                finish = "stop"
                break
            if cut or len(ids) >= max_tokens:
                break
    except (RuntimeError, ValueError, OSError, IndexError) as e:
        raise GenerationError(f"llama.cpp failed while generating: {e}") from e
    finally:
        tokens.close()
    if finish != "cancelled" and not stopped:
        tail = "" if cut else decoder.flush()
        if ends_at_line_break and not answered:
            tail = tail.lstrip()
        fed += len(tail)
        if scanner is not None:
            tail, stopped = scanner.feed(tail)
            finish = "stop" if stopped else finish
            tail += "" if stopped else scanner.flush()
        send(tail, scanner.released if scanner is not None else fed, last=not stopped)
    return Generation(
        token_ids=tuple(ids),
        logprobs=tuple(logprobs),
        finish_reason=finish,
        confidence=meter.confidence,
        min_token_prob=meter.min_token_prob,
        started_at=started_at,
        first_token_at=first_at,
        last_token_at=last_at,
        prompt_evaluated=evaluated,
    )


def live_tokens(llm: Llama) -> list[int]:
    """The tokens the context holds now, in order from position 0."""
    return llm.input_ids[: llm.n_tokens].tolist()


def snapshot_sequence(llm: Llama) -> tuple[tuple[int, ...], ctypes.Array]:
    """Copy the context's key/value cells (sequence 0, the only one) and the tokens they
    hold. Only the cells: llama-cpp-python's ``save_state`` also copies its logits rows
    (``n_batch`` x vocabulary floats, about 100 MB for a 49k vocabulary), which a prompt
    that goes on to evaluate at least one token does not need."""
    n = llm.n_tokens
    tokens = tuple(llm.input_ids[:n].tolist())
    mem = llama_cpp.llama_get_memory(llm.ctx)
    llama_cpp.llama_memory_seq_rm(mem, -1, n, -1)  # nothing beyond the tokens we name
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(llm.ctx, buf, size, 0)
    if written != size:
        raise GenerationError(f"llama.cpp copied {written} of {size} bytes of the context state")
    return tokens, buf


def restore_sequence(llm: Llama, tokens: Sequence[int], data: ctypes.Array, *, keep: int) -> None:
    """Put back cells copied by ``snapshot_sequence`` and keep their first ``keep`` tokens
    as the context (``Llama.generate`` then evaluates only what the prompt adds).
    ``GenerationError`` if llama.cpp refuses them; the context is then empty."""
    if not 0 < keep <= len(tokens):
        raise ValueError(f"keep {keep} outside 1..{len(tokens)}")
    mem = llama_cpp.llama_get_memory(llm.ctx)
    llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
    llm.reset()
    if llama_cpp.llama_state_seq_set_data(llm.ctx, data, len(data), 0) != len(data):
        llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
        raise GenerationError("llama.cpp refused a saved context state")
    if not llama_cpp.llama_memory_seq_rm(mem, -1, keep, -1):
        llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)  # a recurrent model cannot cut: start afresh
        return
    llm.input_ids[:keep] = tokens[:keep]
    llm.n_tokens = keep


class CountingLlama(Llama):
    """A ``Llama`` that counts the tokens it evaluates (``evaluated``): the prompt suffix
    ``generate`` did not find in the context, then each generated token. (llama.cpp's own
    performance counters cannot tell 0 from 1 decoded token: they report at least 1.)"""

    evaluated = 0

    def eval(self, tokens: Sequence[int]) -> None:
        self.evaluated += len(tokens)
        super().eval(tokens)


class ChatPrompter:
    """Messages -> prompt tokens, through the GGUF's own chat template."""

    def __init__(self, llm: Llama) -> None:
        self._llm = llm
        template = llm.metadata.get("tokenizer.chat_template")
        self.base_model = not template  # prompted with a transcript; answers end at a line break
        if not template:
            log.warning("model has no chat template in its metadata (a base model): prompting it with a "
                         "question/answer transcript, answers ending at a line break")
            template = _TRANSCRIPT
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
        """The prompt's tokens. Only the template's own text may become special tokens.

        Attack: tokenizing the whole rendered prompt with special tokens on (as
        llama-cpp-python does) turns a user's literal ``<|im_end|><|im_start|>system`` into
        real control tokens, so a prompt could forge a system turn. Each message's content
        is rendered as a sentinel instead, and tokenized with special tokens off.
        """
        contents = [m.content for m in request.messages]
        messages = [{"role": m.role, "content": _sentinel(i)} for i, m in enumerate(request.messages)]
        try:
            prompt = self._formatter(messages=messages).prompt
        except (jinja2.TemplateError, ValueError) as e:
            raise InvalidRequest(f"the model's chat template refused these messages: {e}") from e
        ids: list[int] = []
        try:
            for part in _SENTINEL.split(prompt):
                if part.startswith("\x00") and part.endswith("\x00"):
                    text, special = contents[int(part[len("\x00mesh-content-"):-1])], False
                else:
                    text, special = part, True  # the template's role markers become real tokens
                if text:
                    ids += self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        except RuntimeError as e:
            raise InvalidRequest(f"the prompt could not be tokenized: {e}") from e
        if self._add_bos and (not ids or ids[0] != self._bos):
            ids.insert(0, self._bos)  # the template left out a BOS the model expects
        return ids


def _sentinel(i: int) -> str:
    return f"\x00mesh-content-{i}\x00"


_SENTINEL = re.compile("(\x00mesh-content-[0-9]+\x00)")


@dataclass(frozen=True)
class SplitArgs:
    """Where a split model's remote slots go (issue 16): ggml RPC servers at ``endpoints``
    (each ``127.0.0.1:PORT``: the tunnel's local ports), ``remote_layers`` slots in all
    (llama.cpp's ``n_gpu_layers``), shared as ``tensor_split``."""

    endpoints: tuple[str, ...]
    remote_layers: int
    tensor_split: tuple[float, ...]


@contextlib.contextmanager
def _devices_in_default_params(devices):
    """llama-cpp-python's ``Llama`` leaves ``llama_model_params.devices`` NULL (and ignores
    ``rpc_servers`` in 0.3.36), so its constructor cannot name RPC devices. It builds its
    params with ``llama_model_default_params()``: for the length of the constructor, that
    returns defaults with ``devices`` set. The engine loads one model at a time."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def with_devices():
        params = original()
        params.devices = ctypes.cast(devices, ctypes.c_void_p)
        return params

    lib.llama_model_default_params = with_devices
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def load_llama(path: Path, *, n_ctx: int, n_threads: int, split: SplitArgs | None = None) -> Llama:
    """Load a GGUF model (after registering this machine's CPU variant with ggml); with
    ``split``, its last slots on the ggml RPC servers it names."""
    from mesh.inference.cpu_variant import ensure_cpu_variant

    ensure_cpu_variant()
    extra: dict = {}
    devices = None
    placing = contextlib.nullcontext()
    if split is not None:
        from mesh.inference.rpc_lender import rpc_devices

        devices = rpc_devices(split.endpoints)
        placing = _devices_in_default_params(devices)
        extra = {"n_gpu_layers": split.remote_layers, "tensor_split": list(split.tensor_split)}
    try:
        with placing:
            llm = CountingLlama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=False,  # not needed: confidence comes from LogitsRecorder
                verbose=False,
                **extra,
            )
        llm._mesh_devices = devices  # the devices array lives as long as the model
        return llm
    except (ValueError, RuntimeError, OSError) as e:
        raise ModelError(
            f"llama.cpp could not load model {path}: {e}; check that it is a complete GGUF model of an "
            f"architecture llama-cpp-python {llama_cpp.__version__} supports, or pass --model PATH"
        ) from e
