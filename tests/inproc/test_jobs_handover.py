"""Jobs handed between peers: real peers over signed RPC on loopback, scripted backends.

The owner hands a job to the peer that would serve it; the result comes back the same
way, also when the owner was offline while it was produced, and a job whose executor
goes away runs elsewhere with exactly one result stored."""

from __future__ import annotations

import asyncio

import pytest

from mesh.discovery.seeds import seed_text
from mesh.errors import InvalidRequest
from mesh.jobs.sync import JobSyncConfig
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support.loopmesh import config, run, start_mesh, wait_for

ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
FAST = JobSyncConfig.for_tests()


def _with_sync(peers):
    for p in peers:
        p.job_sync.cfg = FAST
    return peers


def _submit(peer, model: str):
    job = peer.jobs.submit(ASK, owner=peer.identity.peer_id_text, route={"model": model})
    peer.job_runner.wake()
    return job


async def _all_see(peers, n):
    await wait_for(lambda: all(sum(m.state == "alive" for m in p.membership_service.view()) == n for p in peers))


def test_a_job_runs_where_its_model_is_and_the_result_comes_back(tmp_path):
    async def main():
        small = ScriptedBackend(["small"], model="small", parameters=100)
        big = ScriptedBackend(["big", " answer"], model="big", parameters=1000)
        peers = _with_sync(await start_mesh(tmp_path, [small, big]))
        owner, executor = peers
        try:
            await _all_see(peers, 2)
            job = _submit(owner, "big")
            await wait_for(lambda: owner.jobs.get(job.id).state.value == "done")
            mine = owner.jobs.get(job.id)
            assert mine.result_text == "big answer" and mine.ran_on == executor.identity.peer_id_text
            theirs = executor.jobs.get(job.id)  # the executor's durable copy, same id
            assert theirs.owner == owner.identity.peer_id_text
            await wait_for(lambda: executor.jobs.get(job.id).delivered)
            assert owner.job_sync.counts["handed"] == 1 and executor.job_sync.counts["adopted"] == 1
            assert small.requests == []  # nothing generated at the owner
            assert not owner.router.reservations  # the handover's reservation was released
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_a_result_waits_for_its_owner_to_come_back(tmp_path):
    async def main():
        big = ScriptedBackend(["w"] * 20, delay_s=0.08, model="big", parameters=1000)
        peers = _with_sync(await start_mesh(tmp_path, [ScriptedBackend(["s"], model="small"), big]))
        owner, executor = peers
        restarted = None
        try:
            await _all_see(peers, 2)
            job = _submit(owner, "big")
            await wait_for(lambda: owner.jobs.get(job.id).lease_holder == executor.identity.peer_id_text)
            await owner.stop(grace_s=0)  # the owner goes away while its job runs elsewhere
            await wait_for(lambda: executor.jobs.get(job.id).state.value == "done")
            assert executor.job_sync.pending()["outcomes_held"] == 1
            await asyncio.sleep(1.0)
            assert not executor.jobs.get(job.id).delivered  # held: nobody to deliver to
            restarted = Peer(config(tmp_path, "p0", seeds=(seed_text(executor.endpoint, executor.transport.public),)),
                             backend=ScriptedBackend(["s"], model="small"))
            await restarted.start()
            restarted.job_sync.cfg = FAST
            await wait_for(lambda: restarted.jobs.get(job.id).state.value == "done")
            got = restarted.jobs.get(job.id)
            assert got.result_text == "w" * 20 and got.ran_on == executor.identity.peer_id_text
            await wait_for(lambda: executor.jobs.get(job.id).delivered)
            assert executor.job_sync.pending()["outcomes_held"] == 0
            assert len(big.requests) == 1  # generated once
        finally:
            for p in (restarted, executor):
                if p is not None:
                    await p.stop(grace_s=0)

    run(main())


def test_a_job_whose_executor_leaves_runs_elsewhere_once(tmp_path):
    async def main():
        slow = [ScriptedBackend(["x"] * 20, delay_s=0.1, model="big", parameters=1000) for _ in range(2)]
        peers = _with_sync(await start_mesh(tmp_path, [ScriptedBackend(["s"], model="small"), *slow]))
        owner = peers[0]
        try:
            await _all_see(peers, 3)
            job = _submit(owner, "big")
            await wait_for(lambda: owner.jobs.get(job.id).lease_holder not in (None, owner.identity.peer_id_text))
            first_id = owner.jobs.get(job.id).lease_holder
            first = next(p for p in peers if p.identity.peer_id_text == first_id)
            other = next(p for p in peers[1:] if p is not first)
            await wait_for(lambda: first.backend.running > 0)
            await first.stop(grace_s=0)  # leaves mid-generation: its job is requeued and handed on
            await wait_for(lambda: owner.jobs.get(job.id).state.value == "done", timeout_s=60)
            done = owner.jobs.get(job.id)
            assert done.ran_on == other.identity.peer_id_text and done.result_text == "x" * 20
            assert owner.job_sync.counts["requeued"] == 1 and owner.job_sync.counts["imported"] == 1
            # the first executor comes back with its copy queued again (it was running it):
            # the owner has taken the job back, so the copy is withdrawn, not generated twice
            fresh = ScriptedBackend(["y"] * 20, model="big", parameters=1000)
            restarted = Peer(config(tmp_path, first.config.name,
                                    seeds=(seed_text(owner.endpoint, owner.transport.public),)), backend=fresh)
            peers[peers.index(first)] = restarted
            await restarted.start()
            await wait_for(lambda: restarted.job_sync.counts["withdrawn"] == 1, timeout_s=30)
            assert job.id not in {j.id for j in restarted.jobs.list(limit=100)}
            assert fresh.requests == []  # nothing generated again
            assert owner.jobs.get(job.id).result_text == "x" * 20
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_cancelling_a_handed_over_job_stops_its_executor_at_once(tmp_path):
    async def main():
        big = ScriptedBackend(["w"] * 200, delay_s=0.05, model="big", parameters=1000)  # 10 s if not stopped
        peers = _with_sync(await start_mesh(tmp_path, [ScriptedBackend(["s"], model="small"), big]))
        owner, executor = peers
        try:
            await _all_see(peers, 2)
            job = _submit(owner, "big")
            await wait_for(lambda: owner.jobs.get(job.id).lease_holder == executor.identity.peer_id_text)
            await wait_for(lambda: big.running > 0)
            assert owner.jobs.cancel(job.id)
            await wait_for(lambda: executor.jobs.get(job.id).state.value == "cancelled", timeout_s=3)
            await wait_for(lambda: big.running == 0, timeout_s=3)
            assert executor.job_sync.counts["cancelled_by_owner"] == 1
            await asyncio.sleep(0.5)
            assert not executor.jobs.get(job.id).delivered and owner.jobs.get(job.id).state.value == "cancelled"
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())


def test_only_the_owner_may_hand_over_and_only_the_executor_may_deliver(tmp_path):
    async def main():
        peers = _with_sync(await start_mesh(tmp_path, [ScriptedBackend(["a"], model="m") for _ in range(3)]))
        a, b, c = peers
        try:
            await _all_see(peers, 3)
            forged = {"job": {"id": "j1", "owner": a.identity.peer_id_text, "request": ASK, "route": {}}}
            client = c.pool.client(b.endpoint)
            with pytest.raises(InvalidRequest, match="owner"):
                await client.call("job.handover", forged, timeout_s=5)
            assert b.job_sync.counts["refused:not_owner"] == 1
            # a result for a job of a's that was never handed to c is refused
            job = a.jobs.submit(ASK, owner=a.identity.peer_id_text, route={"model": "nobody-has-this"})
            outcome = {"id": job.id, "state": "done", "text": "forged", "stats": {}, "ran_on": c.identity.peer_id_text}
            reply = await c.pool.client(a.endpoint).call("job.result", {"outcomes": [outcome]}, timeout_s=5)
            assert job.id in reply["refused"] and a.jobs.get(job.id).result_text is None
            assert a.job_sync.counts["refused:not_handed"] == 1
            with pytest.raises(InvalidRequest):
                await client.call("job.result", {"outcomes": []}, timeout_s=5)
            # only a job's owner may cancel its copy at an executor, or ask whether it still runs it
            adopted = b.jobs.adopt("j2", ASK, owner=a.identity.peer_id_text)
            with pytest.raises(InvalidRequest, match="owner"):
                await client.call("job.cancel_handed", {"id": adopted.id}, timeout_s=5)
            assert b.jobs.get("j2").state.value == "queued" and b.job_sync.counts["refused:not_owner"] == 2
            with pytest.raises(InvalidRequest, match="does not own"):
                await client.call("job.confirm", {"id": "j2"}, timeout_s=5)  # c asks b, which does not own j2
            assert (await client.call("job.confirm", {"id": "nope"}, timeout_s=5))["run"] is False
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main())
