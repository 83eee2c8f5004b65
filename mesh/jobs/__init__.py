"""Durable jobs: a prompt kept in SQLite until something can answer it, and its result
kept until it reaches the peer that asked.

Pure:
- ``mesh.jobs.policy``: states, transitions, leases, retry and backoff.
- ``mesh.jobs.job``: the ``Job`` record, input bounds (``JobLimits``), field encoding.
- ``mesh.jobs.wire``: job messages between peers, validated.
- ``mesh.jobs.config``: ``JobSyncConfig`` (presets: default, ``for_tests()``).
- ``mesh.jobs.errors``: ``JobError`` and its subclasses (defined in the one tree, ``mesh.errors``).

Shell:
- ``mesh.jobs.schema`` and ``mesh.jobs.store``: ``JobStore``, the one place that touches SQLite.
- ``mesh.jobs.runner``: ``JobRunner`` claims due jobs and routes them.
- ``mesh.jobs.sync``: ``JobSync`` hands jobs to the peer the router picks and delivers
  results back to the peer that asked.
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
