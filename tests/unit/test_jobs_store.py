"""JobStore on a real SQLite file, one process, with a manual clock."""

import sqlite3

import pytest

from mesh.errors import InvalidRequest, MeshError
from mesh.jobs import (
    IdempotencyConflict,
    InvalidResult,
    JobLimits,
    JobNotFound,
    JobState,
    JobStore,
    JobStoreError,
    RetryPolicy,
)
from mesh.jobs.schema import SCHEMA_VERSION
from mesh.testing.clock import ManualClock

STATS = {"model": "m", "confidence": 0.9, "completion_tokens": 3}


def ask(prompt="hello", **kw):
    return {"messages": [{"role": "user", "content": prompt}], **kw}


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "jobs.db"


@pytest.fixture
def store(db, clock):
    s = JobStore(db, clock=clock, retry=RetryPolicy(backoff_base_s=10.0, backoff_max_s=60.0))
    yield s
    s.close()


def test_file_is_wal_full_and_versioned(store, db):
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    c.close()
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version() == SCHEMA_VERSION


def test_submit_is_durable_across_reopen(db, clock):
    with JobStore(db, clock=clock) as s:
        job = s.submit(ask("persist me"), owner="A", route={"model": "m", "local_only": True})
    with JobStore(db, clock=clock) as s:
        again = s.get(job.id)
    assert again == job
    assert again.state is JobState.QUEUED and again.attempts == 0
    assert again.generation_request().messages[0].content == "persist me"
    assert again.route == {"model": "m", "local_only": True}
    assert len(job.id) == 26


def test_newer_schema_is_refused(db, clock):
    JobStore(db, clock=clock).close()
    c = sqlite3.connect(db)
    c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    c.commit()
    c.close()
    with pytest.raises(JobStoreError, match="newer|knows up to"):
        JobStore(db, clock=clock)


def test_not_a_database_maps_to_job_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(JobStoreError):
        JobStore(bad)


def test_closed_store_raises_typed_error(store):
    store.close()
    with pytest.raises(JobStoreError):
        store.get("x")


def test_idempotent_submit_returns_the_same_job(store):
    a = store.submit(ask(), owner="A", idempotency_key="k1")
    b = store.submit(ask(), owner="A", idempotency_key="k1")
    assert a.id == b.id
    assert len(store.list()) == 1
    # the key is scoped to its owner: another owner's job is never returned
    c = store.submit(ask(), owner="B", idempotency_key="k1")
    assert c.id != a.id and c.owner == "B"
    with pytest.raises(IdempotencyConflict):
        store.submit(ask("another prompt"), owner="A", idempotency_key="k1")
    assert len(store.list()) == 2


@pytest.mark.parametrize(
    "args,kw,match",
    [
        (ask(""), {}, "empty"),
        (ask("   "), {}, "empty"),
        ({"messages": []}, {}, "non-empty"),
        (ask(max_tokens=0), {}, "max_tokens"),
        (ask(max_tokens="12"), {}, "max_tokens"),
        (ask(max_tokens=10**6), {}, "max_tokens"),
        (ask(temperature=9), {}, "temperature"),
        (ask("x" * (256 * 1024 + 1)), {}, "limit"),
        ("not a map", {}, "map"),
        (ask(), {"route": {"local_only": "yes"}}, "local_only"),
        (ask(), {"owner": ""}, "owner"),
        (ask(), {"idempotency_key": "k" * 500}, "idempotency_key"),
        (ask(), {"max_attempts": 0}, "max_attempts"),
    ],
)
def test_invalid_input_is_refused_at_submit(store, args, kw, match):
    kw = {"owner": "A", **kw}
    with pytest.raises(InvalidRequest, match=match):
        store.submit(args, **kw)
    assert store.list() == []


def test_request_byte_bound(db, clock):
    with JobStore(db, clock=clock, limits=JobLimits(max_request_bytes=1000)) as s:
        s.submit(ask("a" * 500), owner="A")
        with pytest.raises(InvalidRequest, match="bytes"):
            s.submit(ask("é" * 600), owner="A")  # 600 chars, 1200 bytes
        assert len(s.list()) == 1


def test_claim_takes_the_oldest_and_nothing_twice(store, clock):
    ids = []
    for i in range(3):
        ids.append(store.submit(ask(f"p{i}"), owner="A").id)
        clock.advance(1)
    got = [store.claim(worker="W", lease_s=30) for _ in range(4)]
    assert [j.id for j in got[:3]] == ids
    assert got[3] is None
    j = store.get(ids[0])
    assert (j.state, j.lease_holder, j.attempts, j.lease_expires_at) == (JobState.RUNNING, "W", 1, clock.now + 30)


def test_lease_takeover_after_expiry_and_fencing(store, clock):
    job = store.submit(ask(), owner="A")
    assert store.claim(worker="W1", lease_s=10).id == job.id
    clock.advance(9)
    assert store.claim(worker="W2", lease_s=10) is None  # lease still held
    assert store.renew(job.id, worker="W1", lease_s=10)  # until +19
    clock.advance(9.5)
    assert store.claim(worker="W2", lease_s=10) is None
    clock.advance(0.5)
    taken = store.claim(worker="W2", lease_s=10)
    assert (taken.id, taken.lease_holder, taken.attempts) == (job.id, "W2", 2)
    # the first worker lost its lease: it can neither renew, fail nor complete
    assert not store.renew(job.id, worker="W1", lease_s=10)
    assert not store.fail(job.id, worker="W1", error="x", retry=True)
    assert not store.complete(job.id, worker="W1", result_text="late", stats=STATS)
    assert store.complete(job.id, worker="W2", result_text="answer", stats=STATS)
    j = store.get(job.id)
    assert (j.state, j.result_text, j.ran_on, j.lease_holder) == (JobState.DONE, "answer", "W2", None)


def test_exactly_one_result_under_duplicate_completion(store):
    job = store.submit(ask(), owner="A")
    store.claim(worker="W", lease_s=10)
    assert store.complete(job.id, worker="W", result_text="first", stats=STATS) is True
    assert store.complete(job.id, worker="W", result_text="second", stats={"x": 1}) is False
    assert store.import_result(job.id, result_text="third", stats=STATS, ran_on="P") is False
    j = store.get(job.id)
    assert (j.result_text, j.stats, j.ran_on) == ("first", STATS, "W")


def test_expired_lease_exhausts_attempts(store, clock):
    job = store.submit(ask(), owner="A", max_attempts=2)
    store.claim(worker="W1", lease_s=5)
    clock.advance(5)
    store.claim(worker="W2", lease_s=5)
    clock.advance(5)
    later = store.submit(ask("later"), owner="A")
    # the dead job is failed on the way, the next one handed out
    assert store.claim(worker="W3", lease_s=5).id == later.id
    j = store.get(job.id)
    assert j.state is JobState.FAILED and "2 attempts" in j.error and j.attempts == 2


def test_fail_with_retry_backs_off_then_gives_up(store, clock):
    job = store.submit(ask(), owner="A", max_attempts=2)
    store.claim(worker="W", lease_s=5)
    assert store.fail(job.id, worker="W", error="engine crashed", retry=True)
    j = store.get(job.id)
    assert (j.state, j.attempts, j.error, j.available_at) == (JobState.QUEUED, 1, "engine crashed", clock.now + 10)
    clock.advance(9.9)
    assert store.claim(worker="W", lease_s=5) is None  # backing off
    clock.advance(0.1)
    assert store.claim(worker="W", lease_s=5).attempts == 2
    assert store.fail(job.id, worker="W", error="again", retry=True)
    j = store.get(job.id)
    assert j.state is JobState.FAILED and "again" in j.error
    assert store.claim(worker="W", lease_s=5) is None


def test_fail_without_retry(store):
    job = store.submit(ask(), owner="A")
    store.claim(worker="W", lease_s=5)
    assert store.fail(job.id, worker="W", error="unknown model", retry=False)
    assert store.get(job.id).state is JobState.FAILED


def test_cancel(store, clock):
    queued = store.submit(ask("q"), owner="A")
    running = store.submit(ask("r"), owner="A")
    clock.advance(1)
    assert store.cancel(queued.id) is True
    assert store.claim(worker="W", lease_s=5).id == running.id  # the cancelled one is skipped
    assert store.cancel(running.id) is True
    assert not store.renew(running.id, worker="W", lease_s=5)  # the worker learns it
    assert not store.complete(running.id, worker="W", result_text="x", stats=STATS)
    assert store.cancel(running.id) is False  # already finished
    assert store.get(running.id).state is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        store.cancel("nope")
    with pytest.raises(JobNotFound):
        store.get("nope")
    assert isinstance(JobNotFound("x"), MeshError)


def test_list_filters(store, clock):
    a = store.submit(ask("1"), owner="A")
    b = store.submit(ask("2"), owner="B")
    store.cancel(b.id)
    assert [j.id for j in store.list()] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list(owner="A")] == [a.id]
    assert [j.id for j in store.list(states=["cancelled"])] == [b.id]
    assert store.list(owner="A", states=[JobState.CANCELLED]) == []
    assert len(store.list(limit=1)) == 1
    assert store.counts()["queued"] == 1 and store.counts()["cancelled"] == 1


def test_result_bounds(db, clock):
    with JobStore(db, clock=clock, limits=JobLimits(max_result_bytes=100, max_stats_bytes=200)) as s:
        job = s.submit(ask(), owner="A")
        s.claim(worker="W", lease_s=5)
        with pytest.raises(InvalidResult, match="bytes"):
            s.complete(job.id, worker="W", result_text="x" * 101, stats=STATS)
        with pytest.raises(InvalidResult, match="stats"):
            s.complete(job.id, worker="W", result_text="ok", stats={"k": "v" * 300})
        with pytest.raises(InvalidResult, match="finite"):
            s.complete(job.id, worker="W", result_text="ok", stats={"c": float("nan")})
        assert s.get(job.id).state is JobState.RUNNING  # nothing stored by a refused result
        assert s.complete(job.id, worker="W", result_text="ok", stats=STATS)


def test_long_error_text_is_cut_not_refused(db, clock):
    with JobStore(db, clock=clock, limits=JobLimits(max_error_chars=50)) as s:
        job = s.submit(ask(), owner="A")
        s.claim(worker="W", lease_s=5)
        assert s.fail(job.id, worker="W", error="e" * 10_000, retry=False)
        assert len(s.get(job.id).error) == 50


def test_delivery_bookkeeping(db, clock):
    with JobStore(db, clock=clock, local_peer="ME") as s:
        mine = s.submit(ask("mine"), owner="ME")
        theirs = s.submit(ask("theirs"), owner="A")
        broken = s.submit(ask("broken"), owner="A")
        for _ in range(3):
            s.claim(worker="ME", lease_s=5)
        s.complete(mine.id, worker="ME", result_text="r1", stats=STATS)
        s.complete(theirs.id, worker="ME", result_text="r2", stats=STATS)
        s.fail(broken.id, worker="ME", error="bad", retry=False)
        assert s.get(mine.id).delivered  # own outcomes are delivered as they happen
        assert [j.id for j in s.undelivered("A")] == [theirs.id, broken.id]
        assert s.undelivered("ME") == []
        assert s.counts()["undelivered"] == 2
        assert s.mark_delivered(theirs.id) is True
        assert s.mark_delivered(theirs.id) is False
        assert [j.id for j in s.undelivered("A")] == [broken.id]
        queued = s.submit(ask("q"), owner="A")
        assert s.mark_delivered(queued.id) is False  # nothing to deliver yet


def test_import_result_is_stored_once(store):
    handed = store.submit(ask(), owner="ME")
    store.claim(worker="PEER-B", lease_s=60)  # the shell's record of the handover
    assert store.import_result(handed.id, result_text="from B", stats=STATS, ran_on="PEER-B") is True
    assert store.import_result(handed.id, result_text="again", stats=STATS, ran_on="PEER-C") is False
    j = store.get(handed.id)
    assert (j.state, j.result_text, j.ran_on, j.delivered) == (JobState.DONE, "from B", "PEER-B", True)
    # a queued job can take an imported result too; a cancelled one cannot
    q = store.submit(ask("q"), owner="ME")
    assert store.import_result(q.id, result_text="r", stats=STATS, ran_on="P")
    c = store.submit(ask("c"), owner="ME")
    store.cancel(c.id)
    assert not store.import_result(c.id, result_text="r", stats=STATS, ran_on="P")
    assert store.get(c.id).result_text is None
    with pytest.raises(JobNotFound):
        store.import_result("nope", result_text="r", stats=STATS, ran_on="P")


def test_adopt_keeps_the_id_and_is_idempotent(store):
    a = store.adopt("job-from-a", ask(), owner="A", idempotency_key="k")
    b = store.adopt("job-from-a", ask(), owner="A", idempotency_key="k")
    assert a == b and a.id == "job-from-a" and len(store.list()) == 1
    with pytest.raises(IdempotencyConflict):
        store.adopt("job-from-a", ask("different"), owner="A")


def test_withdraw_forgets_only_an_unfinished_copy_of_another_owners_job(db, clock):
    with JobStore(db, clock=clock, local_peer="ME") as s:
        running = s.adopt("from-a-1", ask("one"), owner="A")
        queued = s.adopt("from-a-2", ask("two"), owner="A")
        done = s.adopt("from-a-3", ask("three"), owner="A")
        mine = s.submit(ask("mine"), owner="ME")
        for _ in range(3):
            s.claim(worker="ME", lease_s=60)
        s.complete(done.id, worker="ME", result_text="r", stats=STATS)
        assert s.get(running.id).state.value == "running"
        assert s.withdraw(running.id) and s.withdraw(queued.id)
        assert not s.withdraw(done.id)  # finished: its outcome still goes to its owner
        assert not s.withdraw(mine.id)  # own jobs are never withdrawn
        assert not s.withdraw("unknown")
        assert {j.id for j in s.list()} == {done.id, mine.id}
        again = s.adopt(running.id, ask("one"), owner="A")  # handed over again later: adopted afresh
        assert again.state.value == "queued" and again.attempts == 0


def _finish(store, n, clock, *, text="r"):
    ids = []
    for i in range(n):
        j = store.submit(ask(f"p{i}"), owner="A")
        store.claim(worker="W", lease_s=5)
        store.complete(j.id, worker="W", result_text=text, stats=STATS)
        ids.append(j.id)
        clock.advance(1)
    return ids


def test_prune_by_age_never_touches_live_jobs(store, clock):
    done = _finish(store, 3, clock)  # finished at t0, t0+1, t0+2
    queued = store.submit(ask("waiting"), owner="A")
    running = store.submit(ask("running"), owner="A")
    store.claim(worker="W", lease_s=1e6)
    clock.advance(100)
    # finished 103, 102 and 101 s ago: keeping 102.5 s drops only the oldest
    assert store.prune(keep_s=102.5, max_bytes=10**9, hold_s=0) == 1
    assert {j.id for j in store.list()} == {*done[1:], queued.id, running.id}
    clock.advance(10**6)
    assert store.prune(keep_s=1, max_bytes=0, hold_s=0) == 2  # everything finished goes, even over budget
    assert {j.id for j in store.list()} == {queued.id, running.id}


def test_prune_by_bytes_oldest_first(store, clock):
    ids = _finish(store, 5, clock, text="x" * 10_000)
    store.submit(ask("live"), owner="A")
    # five rows of ~10 KB each plus one small live row; a 25 KB budget keeps the two newest
    assert store.prune(keep_s=10**9, max_bytes=25_000, hold_s=0) == 3
    left = [j.id for j in store.list(states=["done"])]
    assert sorted(left) == sorted(ids[3:])
    assert store.prune(keep_s=10**9, max_bytes=25_000, hold_s=0) == 0
    assert len(store.list(states=["queued"])) == 1


def test_hand_over_moves_the_lease_and_lists_the_job(db, clock):
    with JobStore(db, clock=clock, local_peer="ME") as s:
        job = s.submit(ask("far"), owner="ME")
        assert s.claim(worker="ME", lease_s=5).id == job.id
        assert s.hand_over(job.id, worker="OTHER", to="B", lease_s=100) is False  # not the holder
        assert s.hand_over(job.id, worker="ME", to="B", lease_s=100) is True
        j = s.get(job.id)
        assert (j.state, j.lease_holder, j.ran_on) == (JobState.RUNNING, "B", "B")
        assert [h.id for h in s.handed_over()] == [job.id]
        assert s.counts()["handed_over"] == 1
        assert s.claim(worker="ME", lease_s=5) is None  # B's lease holds
        assert s.renew(job.id, worker="B", lease_s=100)  # the owner renews on B's behalf
        # B died: requeued with B as the failing worker, then claimable again
        assert s.fail(job.id, worker="B", error="B is dead", retry=True)
        assert s.handed_over() == []
        clock.advance(10**4)
        assert s.claim(worker="ME", lease_s=5).id == job.id


def test_import_failure_is_first_outcome_wins(db, clock):
    with JobStore(db, clock=clock, local_peer="ME") as s:
        job = s.submit(ask(), owner="ME")
        s.claim(worker="ME", lease_s=5)
        s.hand_over(job.id, worker="ME", to="B", lease_s=100)
        assert s.import_failure(job.id, error="B gave up", ran_on="B") is True
        assert s.import_result(job.id, result_text="late", stats=STATS, ran_on="C") is False
        j = s.get(job.id)
        assert (j.state, j.error, j.delivered) == (JobState.FAILED, "B gave up", True)


def test_outcomes_held_for_an_owner_survive_pruning_until_hold_s(db, clock):
    with JobStore(db, clock=clock, local_peer="ME") as s:
        theirs = s.adopt("from-a", ask("a"), owner="A")
        s.claim(worker="ME", lease_s=5)
        s.complete(theirs.id, worker="ME", result_text="for A", stats=STATS)
        assert s.undelivered_owners() == ["A"]
        clock.advance(1000)
        assert s.prune(keep_s=1, max_bytes=0, hold_s=5000) == 0  # A has not got it yet
        assert s.open_jobs("A") == 0
        clock.advance(5000)
        assert s.prune(keep_s=1, max_bytes=0, hold_s=5000) == 1  # held long enough
        assert s.undelivered_owners() == []


def test_open_jobs_counts_queued_and_running_per_owner(store):
    for i in range(3):
        store.adopt(f"j{i}", ask(f"p{i}"), owner="A")
    store.submit(ask("b"), owner="B")
    store.claim(worker="W", lease_s=5)
    assert (store.open_jobs("A"), store.open_jobs("B"), store.open_jobs("C")) == (3, 1, 0)
