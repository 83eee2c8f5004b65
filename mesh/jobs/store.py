"""``JobStore``: durable jobs in one SQLite file (WAL, ``synchronous=FULL``).

Contract:

- Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent stores on the same
  file (other processes, or a second ``JobStore`` in this one) serialise on SQLite's
  write lock; ``claim`` is atomic across them. A write waits up to ``busy_timeout_s``
  for that lock, then raises ``JobStoreError``.
- A method that writes returns only after COMMIT, and with ``synchronous=FULL`` in WAL
  mode a COMMIT is on disk when it returns: a job id returned by ``submit`` survives a
  kill -9 or a power cut right after.
- Threads: one connection per store, usable only from the thread that created the store
  (sqlite3's ``check_same_thread``). Use it from the peer's asyncio thread; each call
  blocks that thread for one short transaction (an fsync). To keep fsyncs off the event
  loop, create and use the store inside one dedicated single-thread executor instead.
- Foreign errors: every ``sqlite3.Error`` is mapped to ``JobStoreError`` here; bad input
  is ``InvalidRequest`` (submit) or ``InvalidResult`` (results).
- Time: ``clock`` (default ``time.time``) is read only when a method's ``now`` is None.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from mesh.errors import InvalidRequest
from mesh.jobs.errors import IdempotencyConflict, JobNotFound, JobStoreError
from mesh.jobs.job import (
    DEFAULT_LIMITS,
    Job,
    JobLimits,
    check_lease_s,
    check_name,
    clip_error,
    encode_request,
    encode_result,
    encode_route,
    new_job_id,
)
from mesh.jobs.policy import (
    DEFAULT_RETRY,
    TERMINAL,
    JobState,
    RetryPolicy,
    can_transition,
    on_claim,
    on_failure,
)
from mesh.jobs.schema import MIGRATIONS, ROW_BYTES_SQL, SCHEMA_VERSION

_Q, _R = JobState.QUEUED.value, JobState.RUNNING.value
_OUTCOMES = (JobState.DONE.value, JobState.FAILED.value)  # what the owner must be told


def _map_sqlite(e: sqlite3.Error, path: str) -> JobStoreError:
    msg = str(e)
    if "locked" in msg or "busy" in msg:
        return JobStoreError(f"job store {path} stayed locked by another writer past busy_timeout: {msg}")
    if isinstance(e, sqlite3.ProgrammingError):
        return JobStoreError(f"job store {path} misused (closed, or used from another thread): {msg}")
    return JobStoreError(f"job store {path}: {msg}")


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        owner=row["owner"],
        idempotency_key=row["idempotency_key"],
        request=json.loads(row["request"]),
        route=json.loads(row["route"]),
        state=JobState(row["state"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        available_at=row["available_at"],
        lease_holder=row["lease_holder"],
        lease_expires_at=row["lease_expires_at"],
        result_text=row["result_text"],
        stats=None if row["stats"] is None else json.loads(row["stats"]),
        error=row["error"],
        ran_on=row["ran_on"],
        delivered=bool(row["delivered"]),
    )


class JobStore:
    """Durable job queue and result store of one peer. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        clock: Callable[[], float] = time.time,
        limits: JobLimits = DEFAULT_LIMITS,
        retry: RetryPolicy = DEFAULT_RETRY,
        busy_timeout_s: float = 5.0,
        local_peer: str | None = None,
    ) -> None:
        """``local_peer``: this peer's id. Outcomes of its own jobs count as delivered the
        moment they are stored; those of other owners wait in ``undelivered(owner)``."""
        self.path = os.fspath(path)
        self.local_peer = local_peer
        self._clock = clock
        self.limits = limits
        self.retry = retry
        self._cancel_watchers: list[Callable[[str], None]] = []  # see watch_cancel
        try:
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise _map_sqlite(e, self.path) from e
        self._conn.row_factory = sqlite3.Row
        try:
            with self._errors():
                c = self._conn
                c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                c.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
                mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JobStoreError(f"job store {self.path}: cannot use WAL mode (got {mode!r})")
                c.execute("PRAGMA synchronous = FULL")
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._errors():
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    # -- jobs in ----------------------------------------------------------------

    def submit(
        self,
        request_args: dict[str, Any],
        *,
        owner: str,
        route: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_attempts: int = 5,
    ) -> Job:
        """Validate and store a new queued job; return it once it is committed to disk.

        ``request_args`` are ask args (``mesh.api.ask_args``); they are validated as the
        ``ask`` RPC would (``InvalidRequest``: empty prompt, bad field, too large). With an
        ``idempotency_key`` already used by this ``owner`` for the same request, the
        existing job is returned and nothing is added; for another request,
        ``IdempotencyConflict``.
        """
        return self._insert(
            new_job_id(), request_args, owner=owner, route=route, idempotency_key=idempotency_key,
            max_attempts=max_attempts, by_id=False,
        )

    def adopt(
        self,
        job_id: str,
        request_args: dict[str, Any],
        *,
        owner: str,
        route: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_attempts: int = 5,
    ) -> Job:
        """Store a job handed over by its owner (another peer), keeping its id.

        Idempotent by job id: a second handover of the same job returns the stored one.
        """
        check_name(job_id, "job id", self.limits)
        return self._insert(
            job_id, request_args, owner=owner, route=route, idempotency_key=idempotency_key,
            max_attempts=max_attempts, by_id=True,
        )

    def _insert(self, job_id, request_args, *, owner, route, idempotency_key, max_attempts, by_id) -> Job:
        lim = self.limits
        check_name(owner, "owner", lim)
        if idempotency_key is not None:
            check_name(idempotency_key, "idempotency_key", lim)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not (
            1 <= max_attempts <= lim.max_attempts_limit
        ):
            raise InvalidRequest(f"max_attempts must be an integer in 1..{lim.max_attempts_limit}")
        request = encode_request(request_args, lim)
        route_text = encode_route(route, lim)
        now = self._clock()
        with self._tx() as c:
            existing = None
            if by_id:
                existing = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if existing is None and idempotency_key is not None:
                existing = c.execute(
                    "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, idempotency_key)
                ).fetchone()
            if existing is not None:
                if existing["request"] != request or existing["route"] != route_text or existing["owner"] != owner:
                    raise IdempotencyConflict(
                        f"job {existing['id']} was submitted with this key (or id) for another request"
                    )
                return _row_to_job(existing)
            c.execute(
                "INSERT INTO jobs (id, owner, idempotency_key, request, route, state, attempts, max_attempts,"
                " created_at, updated_at, available_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (job_id, owner, idempotency_key, request, route_text, _Q, max_attempts, now, now, now),
            )
            return self._get(c, job_id)

    # -- execution --------------------------------------------------------------

    def claim(self, *, worker: str, lease_s: float, now: float | None = None) -> Job | None:
        """Take the oldest claimable job for ``worker`` under a lease, or None if none is.

        Claimable: queued and due, or running under an expired lease (its worker is
        presumed dead: at-least-once execution). Each claim starts an attempt; a job
        whose attempts are used up is failed instead of handed out.
        """
        check_name(worker, "worker", self.limits)
        lease_s = check_lease_s(lease_s)
        now = self._now(now)
        with self._tx() as c:
            while True:
                row = c.execute(
                    "SELECT * FROM jobs WHERE (state = ? AND available_at <= ?)"
                    " OR (state = ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?))"
                    " ORDER BY seq LIMIT 1",
                    (_Q, now, _R, now),
                ).fetchone()
                if row is None:
                    return None
                decision = on_claim(attempts=row["attempts"], max_attempts=row["max_attempts"], now=now)
                self._check(row, decision.state)
                if decision.state is JobState.FAILED:
                    c.execute(
                        "UPDATE jobs SET state = ?, error = ?, lease_holder = NULL, lease_expires_at = NULL,"
                        " delivered = ?, updated_at = ? WHERE seq = ?",
                        (decision.state.value, clip_error(decision.error, self.limits), self._delivered(row), now,
                         row["seq"]),
                    )
                    continue
                c.execute(
                    "UPDATE jobs SET state = ?, lease_holder = ?, lease_expires_at = ?, attempts = attempts + 1,"
                    " ran_on = ?, updated_at = ? WHERE seq = ?",
                    (_R, worker, now + lease_s, worker, now, row["seq"]),
                )
                return self._get(c, row["id"])

    def renew(self, job_id: str, *, worker: str, lease_s: float, now: float | None = None) -> bool:
        """Extend ``worker``'s lease. False if it no longer holds the job (taken over,
        cancelled, finished): the worker should stop."""
        lease_s = check_lease_s(lease_s)
        now = self._now(now)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ? AND state = ? AND lease_holder = ?",
                (now + lease_s, now, job_id, _R, worker),
            )
            return cur.rowcount == 1

    def complete(
        self, job_id: str, *, worker: str, result_text: str, stats: dict[str, Any], now: float | None = None,
        ran_on: str | None = None,
    ) -> bool:
        """Store the result of ``worker``'s attempt. True if stored by this call.

        Fenced by the lease: only the current lease holder of a running job can complete
        it (a lease that expired but was not taken over still counts). A second
        completion, a worker whose lease was taken over, or a cancelled job: False, and
        the stored job is unchanged. ``InvalidResult`` if the result cannot be stored.
        ``ran_on``: the peer that generated it, when the worker routed it elsewhere.
        """
        if ran_on is not None:
            check_name(ran_on, "ran_on", self.limits)
        result_text, stats_text = encode_result(result_text, stats, self.limits)
        now = self._now(now)
        with self._tx() as c:
            row = self._row(c, job_id)
            if row["state"] != _R or row["lease_holder"] != worker:
                return False
            self._check(row, JobState.DONE)
            c.execute(
                "UPDATE jobs SET state = ?, result_text = ?, stats = ?, ran_on = ?, lease_holder = NULL,"
                " lease_expires_at = NULL, delivered = ?, updated_at = ? WHERE seq = ?",
                (JobState.DONE.value, result_text, stats_text, ran_on or worker, self._delivered(row), now, row["seq"]),
            )
            return True

    def fail(self, job_id: str, *, worker: str, error: str, retry: bool, now: float | None = None) -> bool:
        """End ``worker``'s attempt with an error: queued again after a backoff if
        ``retry`` and attempts remain, else failed. False if ``worker`` does not hold it."""
        now = self._now(now)
        error = clip_error(error, self.limits)
        with self._tx() as c:
            row = self._row(c, job_id)
            if row["state"] != _R or row["lease_holder"] != worker:
                return False
            d = on_failure(
                attempts=row["attempts"], max_attempts=row["max_attempts"], retry=bool(retry), error=error,
                now=now, policy=self.retry,
            )
            self._check(row, d.state)
            c.execute(
                "UPDATE jobs SET state = ?, available_at = ?, error = ?, lease_holder = NULL,"
                " lease_expires_at = NULL, delivered = ?, updated_at = ? WHERE seq = ?",
                (d.state.value, d.available_at, clip_error(d.error, self.limits), self._delivered(row), now, row["seq"]),
            )
            return True

    def defer(self, job_id: str, *, worker: str, reason: str, delay_s: float, now: float | None = None) -> bool:
        """Nothing could answer this job now (every peer busy, no fit model, the cloud
        down): back to the queue after ``delay_s`` without spending an attempt, since the
        job itself did not fail. False if ``worker`` does not hold it."""
        now = self._now(now)
        if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)) or not 0 <= delay_s < math.inf:
            raise ValueError(f"delay_s must be a non-negative number of seconds, got {delay_s!r}")
        with self._tx() as c:
            row = self._row(c, job_id)
            if row["state"] != _R or row["lease_holder"] != worker:
                return False
            self._check(row, JobState.QUEUED)
            c.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), available_at = ?, error = ?,"
                " lease_holder = NULL, lease_expires_at = NULL, updated_at = ? WHERE seq = ?",
                (JobState.QUEUED.value, now + delay_s, clip_error(reason, self.limits), now, row["seq"]),
            )
            return True

    def cancel(self, job_id: str, *, now: float | None = None) -> bool:
        """Cancel a queued or running job. False if it had already finished.

        Its result is never stored afterwards (``complete`` and ``import_result`` refuse a
        cancelled job). A running job's worker in this process is told at once (see
        ``watch_cancel``); one elsewhere learns it from ``renew`` / ``complete`` returning
        False."""
        cancelled = self._end_unless_ended(job_id, JobState.CANCELLED, {}, now=self._now(now))
        if cancelled:
            for watcher in list(self._cancel_watchers):
                watcher(job_id)
        return cancelled

    def withdraw(self, job_id: str) -> bool:
        """Forget a copy of another owner's job that has not finished here (its owner took
        it back: ``job.confirm`` said so). False if there is no such copy (own job, ended,
        or unknown). A later handover of the same job adopts it afresh."""
        with self._tx() as c:
            cur = c.execute("DELETE FROM jobs WHERE id = ? AND owner != ? AND state IN (?, ?)",
                            (job_id, self.local_peer or "", _Q, _R))
            return cur.rowcount == 1

    def watch_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(job_id)`` after this store cancels a job (after the COMMIT), so
        the worker running it can stop generating now. ``callback`` must not raise or
        block. Returns the function that stops watching."""
        self._cancel_watchers.append(callback)

        def unwatch() -> None:
            if callback in self._cancel_watchers:
                self._cancel_watchers.remove(callback)

        return unwatch

    # -- reading ------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job with this id; ``JobNotFound`` if there is none (or it was pruned)."""
        with self._errors():
            return self._get(self._conn, job_id)

    def list(
        self, *, owner: str | None = None, states: Iterable[JobState | str] | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first, optionally of one owner and in some states."""
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states is not None:
            st = [JobState(s).value for s in states]
            where.append(f"state IN ({', '.join('?' * len(st))})")
            args.extend(st)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._errors():
            return [_row_to_job(r) for r in self._conn.execute(sql, (*args, max(0, int(limit))))]

    def counts(self) -> dict[str, int]:
        """Jobs per state, plus ``undelivered``: outcomes not yet known to their owner."""
        with self._errors():
            out = {s.value: 0 for s in JobState}
            for state, n in self._conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                out[state] = n
            out["undelivered"] = self._conn.execute(
                "SELECT count(*) FROM jobs WHERE delivered = 0 AND state IN (?, ?)", _OUTCOMES
            ).fetchone()[0]
            out["handed_over"] = self._conn.execute(
                "SELECT count(*) FROM jobs WHERE owner = ? AND state = ? AND lease_holder IS NOT NULL"
                " AND lease_holder != owner", (self.local_peer or "", _R)
            ).fetchone()[0]
        return out

    # -- results back to the owner ----------------------------------------------

    def undelivered(self, owner: str, *, limit: int = 100) -> list[Job]:
        """Done or failed jobs of ``owner`` whose outcome has not reached it, oldest first."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE owner = ? AND delivered = 0 AND state IN (?, ?) ORDER BY seq LIMIT ?",
                (owner, *_OUTCOMES, max(0, int(limit))),
            )
            return [_row_to_job(r) for r in rows]

    def mark_delivered(self, job_id: str) -> bool:
        """Record that the owner has the outcome. False if already recorded or not finished."""
        with self._tx() as c:
            self._row(c, job_id)
            cur = c.execute(
                "UPDATE jobs SET delivered = 1 WHERE id = ? AND delivered = 0 AND state IN (?, ?)",
                (job_id, *_OUTCOMES),
            )
            return cur.rowcount == 1

    def import_result(
        self, job_id: str, *, result_text: str, stats: dict[str, Any], ran_on: str, now: float | None = None
    ) -> bool:
        """Store a result produced by another peer (at the owner, after a handover).

        Idempotent by job id: the first result wins; a later one (or one for a job that
        failed or was cancelled meanwhile) returns False and changes nothing. The job is
        marked delivered, since this store is the owner's.
        """
        check_name(ran_on, "ran_on", self.limits)
        result_text, stats_text = encode_result(result_text, stats, self.limits)
        return self._end_unless_ended(
            job_id, JobState.DONE, {"result_text": result_text, "stats": stats_text, "ran_on": ran_on, "delivered": 1},
            now=self._now(now),
        )

    def import_failure(self, job_id: str, *, error: str, ran_on: str, now: float | None = None) -> bool:
        """Store that the peer a job was handed to gave up on it (at the owner). Like
        ``import_result``: the first outcome wins, a later one changes nothing."""
        check_name(ran_on, "ran_on", self.limits)
        return self._end_unless_ended(
            job_id, JobState.FAILED, {"error": clip_error(error, self.limits), "ran_on": ran_on, "delivered": 1},
            now=self._now(now),
        )

    def _end_unless_ended(self, job_id: str, new: JobState, columns: dict[str, Any], *, now: float) -> bool:
        """Move a job that has not ended yet to the terminal state ``new``, setting
        ``columns`` (names from this module only) and dropping its lease. False, and
        nothing changed, if it had already ended: the first outcome wins."""
        sets = "".join(f", {name} = ?" for name in columns)
        with self._tx() as c:
            row = self._row(c, job_id)
            if JobState(row["state"]) in TERMINAL:
                return False
            self._check(row, new)
            c.execute(
                f"UPDATE jobs SET state = ?{sets}, lease_holder = NULL, lease_expires_at = NULL, updated_at = ?"
                " WHERE seq = ?",
                (new.value, *columns.values(), now, row["seq"]),
            )
            return True

    # -- handover (the owner's side) ----------------------------------------------

    def hand_over(self, job_id: str, *, worker: str, to: str, lease_s: float, now: float | None = None) -> bool:
        """``worker`` (holding the job) handed it to peer ``to``, which accepted it: ``to``
        now holds the lease (renewed by the owner while ``to`` is alive, see ``renew``)
        and is recorded as where it runs. False if ``worker`` no longer holds it."""
        check_name(to, "peer id", self.limits)
        lease_s = check_lease_s(lease_s)
        now = self._now(now)
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_holder = ?, lease_expires_at = ?, ran_on = ?, updated_at = ?"
                " WHERE id = ? AND state = ? AND lease_holder = ?",
                (to, now + lease_s, to, now, job_id, _R, worker),
            )
            return cur.rowcount == 1

    def rename_peer(self, old: str, new: str) -> int:
        """Peer ``old`` is now ``new`` (``mesh rotate``: the mesh authority certified ``new``
        as its successor): its jobs (as owner) and its leases (as the peer running a job)
        follow it. Idempotent; returns how many jobs changed."""
        check_name(old, "peer id", self.limits)
        check_name(new, "peer id", self.limits)
        if old == new:
            return 0
        with self._tx() as c:
            owned = c.execute("UPDATE jobs SET owner = ? WHERE owner = ?", (new, old)).rowcount
            held = c.execute("UPDATE jobs SET lease_holder = ? WHERE lease_holder = ?", (new, old)).rowcount
        if self.local_peer == old:
            self.local_peer = new
        return owned + held

    def handed_over(self, *, limit: int = 1000) -> list[Job]:
        """This peer's own jobs running on other peers (handed over), oldest first."""
        if self.local_peer is None:
            return []
        with self._errors():
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE owner = ? AND state = ? AND lease_holder IS NOT NULL AND lease_holder != ?"
                " ORDER BY seq LIMIT ?",
                (self.local_peer, _R, self.local_peer, max(0, int(limit))),
            )
            return [_row_to_job(r) for r in rows]

    def undelivered_owners(self) -> list[str]:
        """Owners (other peers) that have outcomes waiting here to be delivered."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT DISTINCT owner FROM jobs WHERE delivered = 0 AND state IN (?, ?)", _OUTCOMES
            )
            return [r[0] for r in rows]

    def open_jobs(self, owner: str) -> int:
        """Queued and running jobs of ``owner`` in this store (for per-owner caps)."""
        with self._errors():
            return self._conn.execute(
                "SELECT count(*) FROM jobs WHERE owner = ? AND state IN (?, ?)", (owner, _Q, _R)
            ).fetchone()[0]

    # -- retention ----------------------------------------------------------------

    def prune(
        self, *, keep_s: float, max_bytes: int, now: float | None = None, hold_s: float = 30 * 24 * 3600.0
    ) -> int:
        """Delete finished jobs (done, failed, cancelled) last changed more than ``keep_s``
        ago, then more finished jobs, oldest first, until all jobs fit in ``max_bytes``
        (as counted by ``schema.ROW_BYTES_SQL``). Queued and running jobs are never
        deleted, even over budget; nor are outcomes not yet delivered to their owner
        (another peer), until ``hold_s`` has passed. Returns the number deleted."""
        now = self._now(now)
        finished = tuple(s.value for s in TERMINAL)
        marks = ", ".join("?" * len(finished))
        kept = "(delivered = 0 AND state IN (?, ?) AND updated_at > ?)"  # held for an owner
        with self._tx() as c:
            n = c.execute(
                f"DELETE FROM jobs WHERE state IN ({marks}) AND updated_at <= ? AND NOT {kept}",
                (*finished, now - keep_s, *_OUTCOMES, now - hold_s),
            ).rowcount
            total = c.execute(f"SELECT coalesce(sum({ROW_BYTES_SQL}), 0) FROM jobs").fetchone()[0]
            if total > max_bytes:
                doomed = []
                for seq, size in c.execute(
                    f"SELECT seq, {ROW_BYTES_SQL} FROM jobs WHERE state IN ({marks}) AND NOT {kept}"
                    " ORDER BY updated_at, seq",
                    (*finished, *_OUTCOMES, now - hold_s),
                ):
                    if total <= max_bytes:
                        break
                    doomed.append((seq,))
                    total -= size
                c.executemany("DELETE FROM jobs WHERE seq = ?", doomed)
                n += len(doomed)
        if n:
            with self._errors():
                self._conn.execute("PRAGMA incremental_vacuum")
        return n

    # -- internals ----------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else float(now)

    def _delivered(self, row: sqlite3.Row) -> int:
        return int(self.local_peer is not None and row["owner"] == self.local_peer)

    @staticmethod
    def _check(row: sqlite3.Row, new: JobState) -> None:
        # Invariant: every write goes through the transition table in mesh.jobs.policy.
        if not can_transition(row["state"], new):
            raise JobStoreError(f"job {row['id']}: {row['state']} -> {new.value} is not allowed")

    def _row(self, c: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in {self.path}")
        return row

    def _get(self, c: sqlite3.Connection, job_id: str) -> Job:
        return _row_to_job(self._row(c, job_id))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise _map_sqlite(e, self.path) from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE (take the write lock now, so a read
        inside cannot go stale), COMMIT on success, ROLLBACK on any error."""
        with self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise JobStoreError(
                    f"job store {self.path} has schema version {version}; this mesh knows up to"
                    f" {SCHEMA_VERSION}. Upgrade mesh, or use another data dir."
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    c.execute(statement)
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
