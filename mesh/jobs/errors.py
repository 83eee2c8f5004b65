"""Errors of the job store, under the one tree of ``mesh.errors``::

    MeshError
    ├── InvalidRequest          bad job input at submit (empty prompt, bad field, too big)
    └── JobError                the job store refused or failed an operation
        ├── JobNotFound         no job with that id in this store
        ├── IdempotencyConflict the idempotency key was used before for another request
        ├── InvalidResult       a result or stats that cannot be stored (too big, not JSON)
        └── JobStoreError       SQLite failed (locked past busy_timeout, corrupt, disk
                                full, schema written by a newer mesh)

sqlite3 errors are mapped to ``JobStoreError`` in ``mesh.jobs.store`` and nowhere else.
"""

from __future__ import annotations

from mesh.errors import MeshError


class JobError(MeshError):
    code = "job_error"


class JobNotFound(JobError):
    code = "job_not_found"


class IdempotencyConflict(JobError):
    code = "idempotency_conflict"


class InvalidResult(JobError):
    code = "invalid_result"


class JobStoreError(JobError):
    code = "job_store_error"
