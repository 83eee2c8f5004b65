"""mesh.http.ratelimit: a token bucket per caller, driven by a manual clock."""

import pytest

from mesh.rpc.ratelimit import RateLimiter, retry_after_header
from mesh.testing.clock import ManualClock


def test_burst_then_rate():
    clock = ManualClock()
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    assert [rl.take("k", now=clock()) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.take("k", now=clock())
    assert wait == pytest.approx(0.5)
    clock.advance(0.25)
    assert rl.take("k", now=clock()) == pytest.approx(0.25)  # half a token there: wait for the rest
    clock.advance(0.25)
    assert rl.take("k", now=clock()) == 0.0
    assert rl.take("k", now=clock()) > 0


def test_callers_have_their_own_buckets():
    rl = RateLimiter(rate_per_s=1.0, burst=1)
    assert rl.take("a", now=0.0) == 0.0
    assert rl.take("a", now=0.0) > 0
    assert rl.take("b", now=0.0) == 0.0


def test_refill_caps_at_burst_and_ignores_clock_going_back():
    rl = RateLimiter(rate_per_s=1.0, burst=2)
    assert rl.take("k", now=100.0) == 0.0
    # an hour idle refills to the burst, no more
    assert [rl.take("k", now=3700.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert rl.take("k", now=10.0) > 0  # the clock stepped back: no refill from it


def test_zero_rate_means_no_limit():
    rl = RateLimiter(rate_per_s=0, burst=1)
    assert not rl.enabled
    assert all(rl.take("k", now=0.0) == 0.0 for _ in range(100))
    assert len(rl) == 0


def test_bounded_buckets_drop_full_ones_first_then_oldest():
    rl = RateLimiter(rate_per_s=1.0, burst=2, max_keys=3)
    for k in ("a", "b", "c"):
        rl.take(k, now=0.0)
        rl.take(k, now=0.0)  # empty
    rl.take("d", now=0.5)  # over the cap; none full yet: the least recently used ("a") goes
    assert len(rl) == 3
    assert rl.take("a", now=0.5) == 0.0  # "a" starts afresh (and pushes out "b")
    assert len(rl) == 3
    assert rl.take("c", now=0.5) > 0  # "c" was kept, still empty


def test_bad_settings_refused():
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=-1, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=1, burst=0)


def test_retry_after_is_whole_seconds_at_least_one():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
