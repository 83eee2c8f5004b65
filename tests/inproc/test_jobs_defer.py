from mesh.jobs import JobStore
from mesh.testing import ManualClock

ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_defer_waits_without_spending_attempts(tmp_path):
    clock = ManualClock()
    store = JobStore(tmp_path / "jobs.db", clock=clock)
    job = store.submit(ASK, owner="me", max_attempts=2)
    for _ in range(10):  # far more waits than max_attempts: nothing could answer, the job did not fail
        claimed = store.claim(worker="me", lease_s=30)
        assert claimed is not None and claimed.id == job.id
        assert store.defer(job.id, worker="me", reason="all busy", delay_s=5)
        clock.advance(1)
        assert store.claim(worker="me", lease_s=30) is None  # not before the delay
        clock.advance(5)
    assert store.get(job.id).state.value == "queued" and store.get(job.id).attempts == 0
    assert not store.defer(job.id, worker="someone-else", reason="x", delay_s=1)  # only the lease holder
    store.close()
