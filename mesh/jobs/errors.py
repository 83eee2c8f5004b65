"""Errors of the job store. They live in the one tree, ``mesh.errors`` (drawn there), and
are re-exported here and from ``mesh.jobs``::

    MeshError
    ├── InvalidRequest          bad job input at submit (empty prompt, bad field, too big)
    └── JobError                the job store refused or failed an operation
        ├── JobNotFound         no job with that id in this store
        ├── IdempotencyConflict the idempotency key was used before for another request
        ├── InvalidResult       a result or stats that cannot be stored (too big, not JSON)
        └── JobStoreError       SQLite failed (locked past busy_timeout, corrupt, disk
                                full, schema written by a newer mesh)

Each has a wire code, so a ``mesh.Client`` gets ``JobNotFound`` back, not a
``RemoteError``. sqlite3 errors are mapped to ``JobStoreError`` in ``mesh.jobs.store``
and nowhere else.
"""

from __future__ import annotations

from mesh.errors import IdempotencyConflict, InvalidResult, JobError, JobNotFound, JobStoreError

__all__ = ["IdempotencyConflict", "InvalidResult", "JobError", "JobNotFound", "JobStoreError"]
