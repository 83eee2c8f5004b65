"""Durable jobs: a prompt kept in SQLite until something can answer it, and its result
kept until it reaches the peer that asked.

- ``mesh.jobs.policy``: states, transitions, leases, retry and backoff (pure).
- ``mesh.jobs.job``: the ``Job`` record, input bounds (``JobLimits``), field encoding.
- ``mesh.jobs.schema``: the SQLite schema and its append-only migrations.
- ``mesh.jobs.store``: ``JobStore``, the one place that touches SQLite.
- ``mesh.jobs.errors``: ``JobError`` and its subclasses.
"""

from mesh.jobs.errors import (
    IdempotencyConflict,
    InvalidResult,
    JobError,
    JobNotFound,
    JobStoreError,
)
from mesh.jobs.job import DEFAULT_LIMITS, Job, JobLimits
from mesh.jobs.policy import (
    DEFAULT_RETRY,
    FAST_TEST_RETRY,
    TERMINAL,
    JobState,
    RetryPolicy,
    can_transition,
    retry_delay_s,
)
from mesh.jobs.store import JobStore

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "FAST_TEST_RETRY",
    "TERMINAL",
    "IdempotencyConflict",
    "InvalidResult",
    "Job",
    "JobError",
    "JobLimits",
    "JobNotFound",
    "JobState",
    "JobStore",
    "JobStoreError",
    "RetryPolicy",
    "can_transition",
    "retry_delay_s",
]
