"""Job policy as pure functions: states, allowed transitions, leases, retry and backoff.

Nothing here touches SQLite or reads the clock; ``now`` (seconds, same scale as
``time.time()``) is passed in, so every rule is tested without sleeping. The store
(``mesh.jobs.store``) asks these functions and writes what they decide.

Execution is at-least-once: a worker holds a job under a lease it renews; a job whose
lease expired is claimable again (the worker is presumed dead). Completion is fenced by
the lease and idempotent, so a job runs possibly twice but has exactly one stored result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a worker (maybe not before ``available_at``)
    RUNNING = "running"  # held by ``lease_holder`` until ``lease_expires_at``
    DONE = "done"  # result stored, never overwritten
    FAILED = "failed"  # gave up: no retry asked, or attempts exhausted
    CANCELLED = "cancelled"  # the owner cancelled it


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

# Every state change the store may make. Terminal states have no way out: a late result
# for a failed or cancelled job is dropped, a stored result is never replaced.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {
            JobState.RUNNING,  # claimed
            JobState.DONE,  # a result imported from the peer it was handed to
            JobState.FAILED,  # attempts exhausted
            JobState.CANCELLED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,  # lease renewed, or taken over after it expired
            JobState.QUEUED,  # failed, will retry after a backoff
            JobState.DONE,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(old: JobState | str, new: JobState | str) -> bool:
    """True if the store may move a job from ``old`` to ``new``."""
    try:
        return JobState(new) in TRANSITIONS[JobState(old)]
    except ValueError:
        return False


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again. Exponential backoff, capped, no jitter."""

    backoff_base_s: float = 2.0  # delay after the first failed attempt
    backoff_max_s: float = 300.0  # the delay never grows past this


DEFAULT_RETRY = RetryPolicy()
FAST_TEST_RETRY = RetryPolicy(backoff_base_s=0.0, backoff_max_s=0.0)


def retry_delay_s(attempts: int, policy: RetryPolicy = DEFAULT_RETRY) -> float:
    """Delay before the next try after ``attempts`` tries (>= 1): base * 2**(attempts-1)."""
    if attempts < 1:
        return 0.0
    # cap the exponent: 2**1000 as float is fine, 2**2000 overflows
    return min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** min(attempts - 1, 64))


def lease_expired(lease_expires_at: float | None, now: float) -> bool:
    """A lease is over at its expiry instant; a missing lease counts as expired."""
    return lease_expires_at is None or now >= lease_expires_at


def is_claimable(
    state: JobState | str, *, available_at: float, lease_expires_at: float | None, now: float
) -> bool:
    """Queued and due, or running under a lease that has expired (its worker is presumed dead)."""
    state = JobState(state)
    if state is JobState.QUEUED:
        return now >= available_at
    if state is JobState.RUNNING:
        return lease_expired(lease_expires_at, now)
    return False


@dataclass(frozen=True)
class Decision:
    """What to do with a job: its next state and when it may next be claimed."""

    state: JobState
    available_at: float
    error: str | None = None


def on_claim(*, attempts: int, max_attempts: int, now: float) -> Decision:
    """A claimable job is about to be taken: run it, or fail it if no attempt is left.

    ``attempts`` counts the attempts already started (each claim starts one).
    """
    if attempts >= max_attempts:
        return Decision(JobState.FAILED, now, f"gave up after {attempts} attempts (the last one's lease expired)")
    return Decision(JobState.RUNNING, now)


def on_failure(
    *, attempts: int, max_attempts: int, retry: bool, error: str, now: float, policy: RetryPolicy = DEFAULT_RETRY
) -> Decision:
    """An attempt failed: queue it again after a backoff, or fail the job for good."""
    if not retry:
        return Decision(JobState.FAILED, now, error)
    if attempts >= max_attempts:
        return Decision(JobState.FAILED, now, f"gave up after {attempts} attempts: {error}")
    return Decision(JobState.QUEUED, now + retry_delay_s(attempts, policy), error)
