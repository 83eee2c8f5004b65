"""Confidence arithmetic, with values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesh.inference.confidence import ConfidenceMeter, LogitsRecorder, chosen_logprob, logsumexp


def test_chosen_logprob_of_a_fair_coin():
    assert chosen_logprob(np.array([0.0, 0.0]), 0) == pytest.approx(math.log(0.5))


def test_chosen_logprob_hand_computed():
    # softmax([1, 2, 3])[2] = e^3 / (e + e^2 + e^3) = 20.0855 / 30.1929 = 0.66524
    assert chosen_logprob(np.array([1.0, 2.0, 3.0]), 2) == pytest.approx(-0.4076059644, abs=1e-9)
    assert math.exp(chosen_logprob(np.array([1.0, 2.0, 3.0]), 0)) == pytest.approx(0.0900305732, abs=1e-9)


def test_chosen_logprob_is_stable_for_huge_logits():
    # exp(1000) overflows a float64; the max shift must keep this exact.
    assert chosen_logprob(np.array([1000.0, 1000.0, 1000.0, 1000.0], dtype=np.float32), 3) == pytest.approx(
        math.log(0.25)
    )
    assert chosen_logprob(np.array([-1000.0, 0.0]), 0) == pytest.approx(-1000.0)


def test_chosen_logprob_with_masked_tokens():
    row = np.array([2.0, -np.inf, 2.0])
    assert chosen_logprob(row, 0) == pytest.approx(math.log(0.5))
    assert chosen_logprob(row, 1) == -math.inf


def test_chosen_logprob_rejects_a_token_outside_the_row():
    with pytest.raises(IndexError):
        chosen_logprob(np.zeros(4), 4)
    with pytest.raises(IndexError):
        chosen_logprob(np.zeros(4), -1)


def test_logsumexp():
    assert logsumexp(np.array([0.0, 0.0])) == pytest.approx(math.log(2))
    assert logsumexp(np.array([-np.inf, -np.inf])) == -math.inf
    with pytest.raises(ValueError):
        logsumexp(np.array([]))


def test_meter_geometric_mean_and_minimum():
    m = ConfidenceMeter()
    m.add(math.log(0.5))
    m.add(math.log(0.125))
    # (0.5 * 0.125) ** (1/2) = 0.25
    assert m.confidence == pytest.approx(0.25)
    assert m.min_token_prob == pytest.approx(0.125)
    assert m.count == 2
    m.add(math.log(1.0))
    # (0.0625) ** (1/3) = 0.39685
    assert m.confidence == pytest.approx(0.0625 ** (1 / 3))
    assert m.min_token_prob == pytest.approx(0.125)


def test_meter_with_no_tokens_is_one():
    m = ConfidenceMeter()
    assert (m.confidence, m.min_token_prob, m.count) == (1.0, 1.0, 0)


def test_meter_bounds():
    m = ConfidenceMeter()
    m.add(1e-7)  # rounding above 0 is clamped: a probability is at most 1
    assert (m.confidence, m.min_token_prob) == (1.0, 1.0)
    m.add(-math.inf)  # a zero-probability token
    assert (m.confidence, m.min_token_prob) == (0.0, 0.0)
    with pytest.raises(ValueError):
        m.add(math.nan)


def llama_candidates(logits: np.ndarray) -> np.recarray:
    """The structure llama-cpp-python hands a logits processor a view of: llama_token_data."""
    dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
    rec = np.recarray(shape=(len(logits),), dtype=dtype)
    rec.id = np.arange(len(logits))
    rec.logit = logits
    rec.p = 0
    return rec


def test_recorder_reads_the_chosen_token_from_the_recorded_row():
    rec = LogitsRecorder()
    cand = llama_candidates(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    out = rec(np.array([], dtype=np.intc), cand.logit)  # a strided view, as in llama-cpp-python
    np.testing.assert_array_equal(out, [1.0, 2.0, 3.0])  # scores pass through unchanged
    cand.logit[:] = 0  # later sampler steps rewrite the buffer; the recorder kept a copy
    assert rec.logprob(2) == pytest.approx(-0.4076059644, abs=1e-6)
    assert rec.steps == 1

    rec(None, np.array([0.0, 0.0, 0.0], dtype=np.float32))
    assert rec.logprob(1) == pytest.approx(math.log(1 / 3), abs=1e-6)
    assert rec.steps == 2


def test_recorder_matches_chosen_logprob_on_a_vocabulary_sized_row():
    rng = np.random.default_rng(7)
    row = (rng.standard_normal(49152) * 4).astype(np.float32)
    rec = LogitsRecorder()
    rec(None, row)
    for token in (0, 123, 49151, int(row.argmax())):
        assert rec.logprob(token) == pytest.approx(chosen_logprob(row.astype(np.float64), token), abs=1e-4)


def test_recorder_refuses_before_a_step_and_outside_the_row():
    rec = LogitsRecorder()
    with pytest.raises(RuntimeError):
        rec.logprob(0)
    rec(None, np.zeros(3, dtype=np.float32))
    with pytest.raises(IndexError):
        rec.logprob(3)
