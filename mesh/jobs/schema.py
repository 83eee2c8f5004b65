"""The job store's SQLite schema and its migrations.

The schema version lives in ``meta(key='schema_version')``. ``MIGRATIONS[i]`` takes the
database from version ``i`` to ``i + 1``; ONLY APPEND TO THIS LIST, never edit a
released step. A database written by a newer mesh (version above ``SCHEMA_VERSION``) is
refused rather than guessed at.
"""

from __future__ import annotations

from mesh.jobs.policy import JobState

_STATES = ", ".join(f"'{s.value}'" for s in JobState)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the jobs table
    (
        f"""
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: claim takes the lowest
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            idempotency_key TEXT,
            request TEXT NOT NULL,                  -- canonical JSON of the ask args
            route TEXT NOT NULL,                    -- JSON of the routing options
            state TEXT NOT NULL CHECK (state IN ({_STATES})),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            available_at REAL NOT NULL,
            lease_holder TEXT,
            lease_expires_at REAL,
            result_text TEXT,
            stats TEXT,
            error TEXT,
            ran_on TEXT,
            delivered INTEGER NOT NULL DEFAULT 0,
            UNIQUE (owner, idempotency_key)         -- NULL keys never collide
        )
        """,
        "CREATE INDEX jobs_by_state ON jobs (state, seq)",
        "CREATE INDEX jobs_by_owner ON jobs (owner, seq)",
        "CREATE INDEX jobs_finished ON jobs (state, updated_at)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

# What a row costs on disk, roughly: its text columns plus a fixed overhead for the rest.
# Used by the disk budget of ``JobStore.prune``.
ROW_BYTES_SQL = (
    "(256 + length(CAST(request AS BLOB)) + length(CAST(route AS BLOB))"
    " + coalesce(length(CAST(result_text AS BLOB)), 0) + coalesce(length(CAST(stats AS BLOB)), 0)"
    " + coalesce(length(CAST(error AS BLOB)), 0))"
)
