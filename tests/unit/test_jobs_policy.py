"""Pure job policy: transitions, leases, retry and backoff. No SQLite, no sleeping."""

import pytest

from mesh.jobs.policy import (
    TERMINAL,
    TRANSITIONS,
    JobState,
    RetryPolicy,
    can_transition,
    is_claimable,
    lease_expired,
    on_claim,
    on_failure,
    retry_delay_s,
)

Q, R, D, F, C = JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.CANCELLED


def test_terminal_states_have_no_way_out():
    for old in TERMINAL:
        for new in JobState:
            assert not can_transition(old, new), (old, new)


@pytest.mark.parametrize(
    "old,new,ok",
    [
        (Q, R, True), (Q, C, True), (Q, D, True), (Q, F, True), (Q, Q, False),
        (R, R, True), (R, Q, True), (R, D, True), (R, F, True), (R, C, True),
        ("queued", "running", True), ("done", "queued", False), ("queued", "nonsense", False),
        ("nonsense", "queued", False),
    ],
)
def test_can_transition(old, new, ok):
    assert can_transition(old, new) is ok


def test_every_state_is_in_the_table():
    assert set(TRANSITIONS) == set(JobState)


def test_lease_expiry_is_at_the_instant():
    assert not lease_expired(100.0, 99.999)
    assert lease_expired(100.0, 100.0)
    assert lease_expired(None, 0.0)


def test_claimable():
    assert is_claimable(Q, available_at=10, lease_expires_at=None, now=10)
    assert not is_claimable(Q, available_at=10.5, lease_expires_at=None, now=10)
    assert not is_claimable(R, available_at=0, lease_expires_at=20, now=19)
    assert is_claimable(R, available_at=0, lease_expires_at=20, now=20)
    for s in TERMINAL:
        assert not is_claimable(s, available_at=0, lease_expires_at=None, now=1e12)


def test_backoff_doubles_and_is_capped():
    p = RetryPolicy(backoff_base_s=2.0, backoff_max_s=30.0)
    assert [retry_delay_s(a, p) for a in range(7)] == [0.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay_s(10_000, p) == 30.0  # no overflow


def test_on_claim_fails_when_attempts_are_used_up():
    assert on_claim(attempts=2, max_attempts=3, now=5).state is R
    d = on_claim(attempts=3, max_attempts=3, now=5)
    assert d.state is F and "3 attempts" in d.error


def test_on_failure():
    p = RetryPolicy(backoff_base_s=1.0, backoff_max_s=100.0)
    d = on_failure(attempts=2, max_attempts=5, retry=True, error="boom", now=100.0, policy=p)
    assert (d.state, d.available_at, d.error) == (Q, 102.0, "boom")
    d = on_failure(attempts=5, max_attempts=5, retry=True, error="boom", now=100.0, policy=p)
    assert d.state is F and "boom" in d.error and "5 attempts" in d.error
    d = on_failure(attempts=1, max_attempts=5, retry=False, error="bad", now=100.0, policy=p)
    assert (d.state, d.error) == (F, "bad")
