"""Confidence of a generated answer, from the model's own token probabilities.

Pure code over numbers and numpy arrays; no llama import. Two pieces:

- ``ConfidenceMeter`` accumulates the log-probability of each chosen token and reports
  ``confidence`` (the geometric mean of the chosen tokens' probabilities, i.e.
  ``exp(mean(logprob))``) and ``min_token_prob`` (the least likely chosen token). Both
  are in [0, 1]. With no tokens both are 1.0: the empty product, and no evidence against
  the answer (a backend never reports stats for zero measured tokens).
- ``LogitsRecorder`` is a llama-cpp-python logits processor (``(input_ids, scores) ->
  scores``, scores unchanged) that keeps a copy of each step's raw logits row and its
  log-sum-exp, so the driving loop can read the chosen token's log-probability once the
  sampler has picked it. This is how confidence is computed while generating, without
  the ``logprobs`` option of ``create_completion`` (which needs ``logits_all=True`` and
  ran about 6x slower on the default model; see bench/confidence_cost.py).

Probabilities are those of the model's raw distribution (temperature 1, no top-k / top-p
truncation), whatever the sampling settings: confidence describes the model, not the
sampler.
"""

from __future__ import annotations

import math

import numpy as np


def logsumexp(logits: np.ndarray) -> float:
    """``log(sum(exp(logits)))`` computed stably (shifted by the row maximum)."""
    row = np.asarray(logits, dtype=np.float64)
    if row.size == 0:
        raise ValueError("logsumexp of an empty row")
    m = float(row.max())
    if not math.isfinite(m):
        # All -inf (nothing possible) gives -inf; +inf or NaN poison the row.
        return m
    return m + math.log(float(np.exp(row - m).sum()))


def chosen_logprob(logits: np.ndarray, token: int) -> float:
    """Log-probability of ``token`` under ``softmax(logits)`` (a log-softmax entry).

    Stable for large logits: uses ``logits[token] - (max + log(sum(exp(logits - max))))``.
    Raises ``IndexError`` for a token outside the row.
    """
    row = np.asarray(logits)
    if not (0 <= token < row.shape[-1]):
        raise IndexError(f"token {token} outside a logits row of {row.shape[-1]}")
    return float(row[token]) - logsumexp(row)


class ConfidenceMeter:
    """Running geometric mean and minimum of chosen-token probabilities."""

    __slots__ = ("_count", "_sum", "_min")

    def __init__(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._min = 0.0  # log-probability; 0.0 == probability 1

    def add(self, logprob: float) -> None:
        """Record one chosen token's log-probability (<= 0; -inf means probability 0)."""
        if math.isnan(logprob):
            raise ValueError("token log-probability is NaN")
        # Rounding can push a certain token a hair above 0; a probability is at most 1.
        lp = min(float(logprob), 0.0)
        self._count += 1
        self._sum += lp
        self._min = lp if self._count == 1 else min(self._min, lp)

    @property
    def count(self) -> int:
        return self._count

    @property
    def confidence(self) -> float:
        """``exp(mean logprob)`` in [0, 1]; 1.0 for no tokens."""
        if self._count == 0:
            return 1.0
        return math.exp(self._sum / self._count)

    @property
    def min_token_prob(self) -> float:
        """Probability of the least likely chosen token, in [0, 1]; 1.0 for no tokens."""
        return math.exp(self._min) if self._count else 1.0


class LogitsRecorder:
    """A logits processor that remembers the last step's row and its log-sum-exp.

    Install it as the only entry of ``logits_processor``; llama-cpp-python calls it once
    per sampled token with the raw logits in token-id order, before any other sampler
    step. It returns the scores unchanged. After the sampler yields token ``t``, call
    ``logprob(t)``; ``steps`` counts calls so the caller can check that each yielded
    token has exactly one recorded row (exceptions raised inside a ctypes callback are
    printed and swallowed by ctypes, so a silent failure shows up as a missing step).

    Cost per step: one copy of the row into a reused buffer, a max, an exp and a sum
    (about 0.1 ms for a 49k vocabulary), no allocation after the first step.
    """

    def __init__(self) -> None:
        self._row: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._lse = float("nan")
        self.steps = 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        row = self._row
        if row is None or row.shape != scores.shape:
            row = self._row = np.empty(scores.shape, dtype=np.float32)
            self._scratch = np.empty(scores.shape, dtype=np.float32)
        np.copyto(row, scores)
        m = float(row.max())
        if math.isfinite(m):
            np.subtract(row, m, out=self._scratch)
            np.exp(self._scratch, out=self._scratch)
            self._lse = m + math.log(float(self._scratch.sum(dtype=np.float64)))
        else:
            self._lse = m
        self.steps += 1
        return scores

    def top(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely tokens of the last recorded row and their
        log-probabilities, most likely first (OpenAI's ``top_logprobs``)."""
        if self._row is None:
            raise RuntimeError("no logits row recorded yet")
        k = min(k, self._row.shape[0])
        if k <= 0:
            return []
        idx = np.argpartition(self._row, -k)[-k:]
        idx = idx[np.argsort(-self._row[idx], kind="stable")]
        return [(int(i), float(self._row[i]) - self._lse) for i in idx]

    def logprob(self, token: int) -> float:
        """Log-probability of ``token`` under the last recorded row."""
        if self._row is None:
            raise RuntimeError("no logits row recorded yet")
        if not (0 <= token < self._row.shape[0]):
            raise IndexError(f"token {token} outside a logits row of {self._row.shape[0]}")
        return float(self._row[token]) - self._lse
