"""``Embedder``: a model's embedding context, opened on the first embedding asked of it.

Runs in the engine process, on the thread that owns the chat model (``ModelRunner``
calls it), so embeddings wait their turn behind generations like any request. Nothing
is loaded until the first embedding: a peer that is never asked one keeps its memory
and its chat speed. The first call opens a second llama.cpp context on the same GGUF in
embedding mode (the weights are memory-mapped, so the file's pages are shared; the new
context costs its own buffers: about 180 MB of RSS for the default 135M model) and
``close_if_idle`` frees it again after ``idle_s`` without use.

Pooling is the model's own (``{arch}.pooling_type`` in the GGUF: mean, CLS or last
token, as embedding models declare); a model that declares none (a chat model) is
mean-pooled, llama.cpp's usual choice for them. Vectors are L2-normalised (unit length),
as OpenAI's are. An input longer than ``max_tokens`` tokens is refused
(``InvalidRequest``), never silently truncated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import llama_cpp

from mesh.errors import GenerationError, InvalidRequest, ModelError
from mesh.inference.embedding import normalized, pack_vector

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # per input; the context (and llama.cpp batch) the embedding context is opened with
IDLE_S = 300.0  # an embedding context unused this long is closed (reopened on the next embedding)
GROUP = 16  # inputs per llama.cpp call; a stop request is honoured between groups
_DECLARED = {  # GGUF pooling types an embedding model may declare
    llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
    llama_cpp.LLAMA_POOLING_TYPE_LAST: "last",
}


def pooling_of(metadata: dict) -> int:
    """The pooling the GGUF declares for its architecture, or mean when it declares none
    usable (a chat model; a NONE or RANK declaration, which give no one vector per input)."""
    arch = metadata.get("general.architecture", "")
    try:
        declared = int(metadata.get(f"{arch}.pooling_type", -1))
    except (TypeError, ValueError):
        declared = -1
    return declared if declared in _DECLARED else llama_cpp.LLAMA_POOLING_TYPE_MEAN


class Embedder:
    """The embedding context of the model at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, metadata: dict, n_threads: int, max_tokens: int = MAX_TOKENS,
                 idle_s: float = IDLE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.pooling = pooling_of(metadata)
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.idle_s = idle_s
        self._clock = clock
        self._llm: llama_cpp.Llama | None = None
        self._last_used = 0.0
        self.opened = 0  # times the context was opened (for tests and status)

    @property
    def is_open(self) -> bool:
        return self._llm is not None

    @property
    def pooling_name(self) -> str:
        return _DECLARED[self.pooling]

    def _open(self) -> llama_cpp.Llama:
        if self._llm is None:
            try:
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=self.max_tokens, n_batch=self.max_tokens,
                    n_ubatch=self.max_tokens, n_threads=self.n_threads, n_threads_batch=self.n_threads,
                    embedding=True, pooling_type=self.pooling, verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as e:
                raise ModelError(f"llama.cpp could not open an embedding context for {self.path.name}: {e}") from e
            self.opened += 1
            log.info("embedding context opened (%s pooling, up to %d tokens per input)",
                     self.pooling_name, self.max_tokens)
        return self._llm

    def embed(self, texts: Sequence[str], *, stop: threading.Event | None = None,
              on_vectors: Callable[[int, list[bytes]], None]) -> int | None:
        """Embed ``texts`` in order; ``on_vectors(first_index, vectors)`` receives each
        group's unit-length float32 vectors as they are made. Returns the tokens
        evaluated, or None when ``stop`` was set (between groups)."""
        llm = self._open()
        self._last_used = self._clock()
        counts = []
        for i, text in enumerate(texts):
            n = len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
            if n > self.max_tokens:
                raise InvalidRequest(f"input[{i}] is {n} tokens; this model embeds at most "
                                     f"{self.max_tokens} tokens per input")
            counts.append(n)
        for start in range(0, len(texts), GROUP):
            if stop is not None and stop.is_set():
                return None
            group = list(texts[start:start + GROUP])
            try:
                vectors = llm.embed(group, normalize=False, truncate=False)
            except (RuntimeError, ValueError, OSError) as e:
                raise GenerationError(f"llama.cpp failed while embedding: {e}") from e
            on_vectors(start, [pack_vector(normalized(v)) for v in vectors])
        self._last_used = self._clock()
        return sum(counts)

    def close_if_idle(self) -> bool:
        """Free the context after ``idle_s`` without use; True if it was closed now."""
        if self._llm is not None and self._clock() - self._last_used >= self.idle_s:
            self.close()
            log.info("embedding context closed after %.0f s unused", self.idle_s)
            return True
        return False

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
