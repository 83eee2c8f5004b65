"""JobStore across real processes on one SQLite file: kill -9 after submit, two
processes claiming and completing at once, two connections in one process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from mesh.jobs import JobState, JobStore
from mesh.testing.clock import ManualClock

ROOT = Path(__file__).resolve().parents[2]
STATS = {"model": "m", "confidence": 0.9}


def ask(prompt="hello"):
    return {"messages": [{"role": "user", "content": prompt}]}


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )


SUBMIT_THEN_DIE = """
    import os, signal, sys
    from mesh.jobs import JobStore
    store = JobStore(sys.argv[1])
    job = store.submit({"messages": [{"role": "user", "content": "survive"}]}, owner="A", idempotency_key="k1")
    sys.stdout.write(job.id + "\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no cleanup, no atexit
"""


def test_job_survives_kill_9_right_after_submit(tmp_path):
    db = tmp_path / "jobs.db"
    p = python(SUBMIT_THEN_DIE, str(db))
    out, err = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, err
    job_id = out.strip()
    assert len(job_id) == 26
    with JobStore(db) as s:
        job = s.get(job_id)
        assert job.state is JobState.QUEUED
        assert job.generation_request().messages[0].content == "survive"
        # the submitter retries after restart with the same key: no second job
        assert s.submit(ask("survive"), owner="A", idempotency_key="k1").id == job_id
        assert len(s.list()) == 1
        # and it completes
        assert s.claim(worker="W", lease_s=10).id == job_id
        assert s.complete(job_id, worker="W", result_text="ok", stats=STATS)


def test_duplicate_completion_through_two_connections(tmp_path):
    db = tmp_path / "jobs.db"
    clock = ManualClock()
    a = JobStore(db, clock=clock)
    b = JobStore(db, clock=clock)
    try:
        job = a.submit(ask(), owner="A")
        assert b.claim(worker="W1", lease_s=10).id == job.id
        assert a.claim(worker="W1", lease_s=10) is None  # b's claim is visible to a
        clock.advance(10)
        assert a.claim(worker="W2", lease_s=10).id == job.id  # takeover seen through the other connection
        results = [
            b.complete(job.id, worker="W1", result_text="stale", stats=STATS),  # lease taken over
            a.complete(job.id, worker="W2", result_text="one", stats=STATS),
            b.complete(job.id, worker="W2", result_text="dup", stats=STATS),  # duplicate delivery
            b.import_result(job.id, result_text="imported", stats=STATS, ran_on="P"),
        ]
        assert results == [False, True, False, False]
        assert a.get(job.id).result_text == b.get(job.id).result_text == "one"
    finally:
        a.close()
        b.close()


# Each worker process waits for "go" on stdin so both start together, then claims until
# nothing is left (leases far longer than the test) or completes every job it is given.
WORKER = """
    import json, sys
    from mesh.jobs import JobStore
    db, worker, mode, now = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = JobStore(db, busy_timeout_s=20)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    done = []
    if mode == "claim":
        while (job := store.claim(worker=worker, lease_s=3600, now=now)) is not None:
            done.append(job.id)
    else:
        for job_id in json.loads(sys.stdin.readline()):
            if store.complete(job_id, worker="W", result_text=worker, stats={"by": worker}, now=now):
                done.append(job_id)
    print(json.dumps(done), flush=True)
"""


def run_two(db, mode, now, payload=None):
    procs = [python(WORKER, str(db), name, mode, str(now)) for name in ("P1", "P2")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n" + (json.dumps(payload) + "\n" if payload is not None else ""))
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(json.loads(out.strip().splitlines()[-1]))
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


N = 150


def test_two_processes_claim_every_job_exactly_once(tmp_path):
    db = tmp_path / "jobs.db"
    now = 1_800_000_000.0
    with JobStore(db, clock=lambda: now) as s:
        ids = [s.submit(ask(f"p{i}"), owner="A").id for i in range(N)]
    p1, p2 = run_two(db, "claim", now)
    assert not set(p1) & set(p2), "a job was claimed by both processes"
    assert sorted(p1 + p2) == sorted(ids), "a job was lost or claimed twice"
    assert len(p1 + p2) == N
    # each process took jobs in submission order
    order = {j: i for i, j in enumerate(ids)}
    assert p1 == sorted(p1, key=order.get) and p2 == sorted(p2, key=order.get)
    with JobStore(db) as s:
        holders = {j.id: j.lease_holder for j in s.list(limit=N)}
        assert all(holders[j] == "P1" for j in p1) and all(holders[j] == "P2" for j in p2)
        assert {j.attempts for j in s.list(limit=N)} == {1}
        # nothing is claimable again until the leases expire; then the oldest is
        assert s.claim(worker="P3", lease_s=10, now=now + 3599) is None
        again = s.claim(worker="P3", lease_s=10, now=now + 3600)
        assert (again.id, again.attempts) == (ids[0], 2)


def test_two_processes_completing_the_same_jobs_store_one_result_each(tmp_path):
    db = tmp_path / "jobs.db"
    now = 1_800_000_000.0
    with JobStore(db, clock=lambda: now) as s:
        ids = [s.submit(ask(f"p{i}"), owner="A").id for i in range(60)]
        for _ in ids:
            s.claim(worker="W", lease_s=3600)
    # both processes deliver a result for every job, as a duplicated delivery would
    p1, p2 = run_two(db, "complete", now, payload=ids)
    assert not set(p1) & set(p2)
    assert sorted(p1 + p2) == sorted(ids)
    with JobStore(db) as s:
        for job_id in ids:
            j = s.get(job_id)
            winner = "P1" if job_id in p1 else "P2"
            assert (j.state, j.result_text, j.stats) == (JobState.DONE, winner, {"by": winner})
