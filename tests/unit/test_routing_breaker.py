"""BreakerBook transitions with an injected clock, and its bound."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh.routing import BreakerBook, BreakerState, RoutingConfig

CFG = replace(RoutingConfig.for_tests(), breaker_failures=3, breaker_open_s=1.0, breaker_open_max_s=5.0,
              breaker_trial_timeout_s=10.0, breaker_window=10, breaker_min_samples=6, breaker_failure_rate=0.5)
CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def opened(book: BreakerBook, peer: str = "pa", now: float = 0.0) -> BreakerBook:
    for _ in range(CFG.breaker_failures):
        book.record_failure(peer, now=now)
    return book


def test_opens_after_consecutive_failures_and_a_success_resets_the_count():
    book = BreakerBook(cfg=CFG)
    book.record_failure("pa", now=0.0)
    book.record_failure("pa", now=0.1)
    book.record_success("pa", now=0.2)
    book.record_failure("pa", now=0.3)
    book.record_failure("pa", now=0.4)
    assert book.state("pa", now=0.5) is CLOSED and book.allows("pa", now=0.5)
    book.record_failure("pa", now=0.5)
    assert book.state("pa", now=0.5) is OPEN and not book.allows("pa", now=0.5)
    assert not book.on_attempt("pa", now=1.4)
    assert book.states(now=0.6) == {"pa": OPEN}
    assert book.state("pb", now=0.5) is CLOSED  # per peer


def test_opens_on_a_failure_rate_without_three_in_a_row():
    book = BreakerBook(cfg=CFG)
    t = 0.0
    for i in range(5):  # F S F S F: never 3 in a row; 3/5 failed, but below the 6 samples needed
        (book.record_failure if i % 2 == 0 else book.record_success)("pa", now=t)
        t += 0.1
    assert book.state("pa", now=t) is CLOSED
    book.record_success("pa", now=t)  # a success never opens it
    assert book.state("pa", now=t) is CLOSED
    book.record_failure("pa", now=t)  # 4/7 >= 0.5 with 7 >= 6 samples
    assert book.state("pa", now=t) is OPEN


def test_half_open_allows_one_trial_and_success_closes():
    book = opened(BreakerBook(cfg=CFG))
    assert book.state("pa", now=0.999) is OPEN
    assert book.state("pa", now=1.0) is HALF
    assert book.allows("pa", now=1.0)
    assert book.on_attempt("pa", now=1.0)  # the trial
    assert not book.allows("pa", now=1.1) and not book.on_attempt("pa", now=1.1)  # only one at a time
    book.record_success("pa", now=1.2)
    assert book.state("pa", now=1.2) is CLOSED and book.allows("pa", now=1.2)
    # and the history is gone: it takes the full count to open again
    book.record_failure("pa", now=1.3)
    book.record_failure("pa", now=1.3)
    assert book.state("pa", now=1.3) is CLOSED


def test_failed_trials_back_off_exponentially_up_to_the_cap():
    book = opened(BreakerBook(cfg=CFG))
    t, cooldowns = 0.0, []
    for _ in range(5):
        reopen = t
        while book.state("pa", now=t) is OPEN:
            t = round(t + 0.25, 2)
        cooldowns.append(t - reopen)
        assert book.on_attempt("pa", now=t)
        book.record_failure("pa", now=t)
    assert cooldowns == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [book.cooldown_s(k) for k in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_a_trial_that_never_reports_frees_the_slot_after_its_timeout():
    book = opened(BreakerBook(cfg=CFG))
    assert book.on_attempt("pa", now=1.0)
    assert not book.allows("pa", now=10.9)
    assert book.allows("pa", now=11.0) and book.on_attempt("pa", now=11.0)


def test_a_late_answer_from_before_the_opening_does_not_close_it():
    book = opened(BreakerBook(cfg=CFG))
    book.record_success("pa", now=0.5)
    assert book.state("pa", now=0.5) is OPEN
    book.record_failure("pa", now=0.6)  # nor does a late failure lengthen it
    assert book.state("pa", now=1.0) is HALF


@pytest.mark.parametrize("n", [1, 3])
def test_the_table_is_bounded_and_evicts_the_least_recently_updated(n):
    book = BreakerBook(cfg=replace(CFG, breaker_max_peers=n))
    for p in ("pa", "pb", "pc", "pd"):
        opened(book, p)
    assert len(book) == n
    assert book.state("pa", now=0.0) is CLOSED  # evicted: a fresh chance
    assert book.state("pd", now=0.0) is OPEN
    book.forget("pd")
    assert book.state("pd", now=0.0) is CLOSED
