"""Per-token log-probabilities of an answer (OpenAI's ``logprobs`` / ``top_logprobs``).

Pure. The engine reads them from the last logits row of each step (``LogitsRecorder``,
``mesh.inference.confidence``; never ``logits_all``, which ran about 6x slower): the
chosen token's log-probability and the ``top`` most likely tokens' under the model's
raw distribution (temperature 1, before top-k / top-p / grammar), as OpenAI reports them.

On the wire (engine frames, RPC chunks ``{"t": text, "lp": [...]}``) an entry is compact::

    [token_bytes, logprob, [[alt_bytes, alt_logprob], ...]]

and ``openai_content`` turns entries into OpenAI's ``choices[0].logprobs.content``::

    {"token": "Hi", "logprob": -0.01, "bytes": [72, 105],
     "top_logprobs": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105]}, ...]}

Entries travel with text: an entry goes out with the first piece of text that carries
part of its token (``LogprobAligner``), so a token held back by a stop sequence keeps
its entry back too, and the tokens of a stop sequence that ended the answer have none.

Bounds (``entries_from_wire``, for what another peer sends): at most ``MAX_TOP``
alternatives, ``MAX_TOKEN_BYTES`` bytes per token, ``MAX_ENTRIES`` per chunk; a
log-probability is a finite number <= 0 (-inf is sent as ``FLOOR``, as OpenAI does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mesh.errors import GenerationError

MAX_TOP = 20  # OpenAI's top_logprobs limit
MAX_TOKEN_BYTES = 256
MAX_ENTRIES = 65536
FLOOR = -9999.0  # a probability of 0 (OpenAI's value for "never")

Entry = list  # [bytes, float, [[bytes, float], ...]]


def clamp(logprob: float) -> float:
    """A log-probability fit for JSON: finite, <= 0 (rounding can give a hair above)."""
    if math.isnan(logprob) or logprob < FLOOR:
        return FLOOR
    return min(float(logprob), 0.0)


def entry(token: bytes, logprob: float, top: Sequence[tuple[bytes, float]] = ()) -> Entry:
    return [bytes(token), clamp(logprob), [[bytes(b), clamp(lp)] for b, lp in top]]


def _pair(v: Any, where: str) -> tuple[bytes, float]:
    if not isinstance(v, (list, tuple)) or len(v) < 2:
        raise GenerationError(f"{where} is not [bytes, logprob]")
    b, lp = v[0], v[1]
    if not isinstance(b, bytes) or len(b) > MAX_TOKEN_BYTES:
        raise GenerationError(f"{where}: token bytes missing or over {MAX_TOKEN_BYTES}")
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not FLOOR <= lp <= 0:
        raise GenerationError(f"{where}: logprob must be a number in [{FLOOR:g}, 0]")
    return b, float(lp)


def entries_from_wire(v: Any) -> list[Entry]:
    """Entries another process or peer sent, checked (``GenerationError`` otherwise)."""
    if not isinstance(v, list) or len(v) > MAX_ENTRIES:
        raise GenerationError(f"logprobs must be a list of at most {MAX_ENTRIES} entries")
    out = []
    for i, e in enumerate(v):
        b, lp = _pair(e, f"logprobs[{i}]")
        top = e[2] if len(e) > 2 else []
        if not isinstance(top, list) or len(top) > MAX_TOP:
            raise GenerationError(f"logprobs[{i}] has more than {MAX_TOP} alternatives")
        out.append([b, lp, [list(_pair(t, f"logprobs[{i}] alternative")) for t in top]])
    return out


def _token(b: bytes, lp: float) -> dict[str, Any]:
    return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}


def openai_content(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` for wire entries."""
    return [{**_token(e[0], e[1]), "top_logprobs": [_token(b, lp) for b, lp in e[2]]} for e in entries]


class LogprobAligner:
    """Hold each token's entry until text from its token is released.

    ``add(start, e)``: the token's text begins at character ``start`` of the answer
    (as fed to the ``StopScanner``). ``release(upto)``: the entries of tokens that begin
    before ``upto`` released characters. ``rest()``: all that are left (at the end)."""

    def __init__(self) -> None:
        self._held: list[tuple[int, Entry]] = []

    def add(self, start: int, e: Entry) -> None:
        self._held.append((start, e))

    def release(self, upto: int) -> list[Entry]:
        n = 0
        while n < len(self._held) and self._held[n][0] < upto:
            n += 1
        out = [e for _, e in self._held[:n]]
        del self._held[:n]
        return out

    def rest(self) -> list[Entry]:
        out = [e for _, e in self._held]
        self._held.clear()
        return out
