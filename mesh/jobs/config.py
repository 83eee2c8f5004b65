"""``JobSyncConfig``: how the job sync hands jobs over and delivers results, units in names.

Presets: ``JobSyncConfig()`` (the default), ``JobSyncConfig.for_tests()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobSyncConfig:
    tick_s: float = 1.0  # how often delivery and handed-over jobs are looked at
    handover_lease_s: float = 120.0  # lease of a handed-over job, renewed while its executor lives
    recheck_s: float = 30.0  # ask the executor about a handed-over job this often
    call_timeout_s: float = 5.0
    probe_timeout_s: float = 2.0  # an executor the view calls dead must answer within this, or its job is requeued
    retry_base_s: float = 1.0  # an owner that did not take its outcomes is retried after this ...
    retry_max_s: float = 30.0  # ... doubling up to this
    max_open_per_owner: int = 1000  # jobs one other peer may have queued or running here
    absent_grace_s: float = 30.0  # an executor missing from the view (not declared dead) is waited for this long
    hold_s: float = 30 * 24 * 3600.0  # undelivered outcomes are kept at least this long

    @classmethod
    def for_tests(cls) -> "JobSyncConfig":
        return cls(tick_s=0.2, recheck_s=2.0, retry_base_s=0.2, retry_max_s=1.0)
