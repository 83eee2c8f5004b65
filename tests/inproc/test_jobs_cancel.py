"""Cancelling a job while it runs, through the public client: a real peer in this process
(signed RPC on loopback, the real job store, runner and router), a scripted backend whose
generation waits on a gate the test holds, so only the cancel can end it."""

from __future__ import annotations

import asyncio

import pytest

from mesh import Client
from mesh.jobs import JobNotFound
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support.loopmesh import config, run, wait_for


def _gated_backend(gate: asyncio.Event) -> ScriptedBackend:
    async def sleep(_s: float) -> None:  # each token waits until the test opens the gate
        await gate.wait()

    return ScriptedBackend(["tick"] * 50, model="scripted", sleep=sleep)


def test_cancel_a_running_job_stops_its_generation_and_no_result_is_stored(tmp_path):
    async def main():
        gate = asyncio.Event()
        backend = _gated_backend(gate)
        peer = Peer(config(tmp_path, "p0"), backend=backend)
        await peer.start()
        client = Client(tmp_path / "p0")
        try:
            job = await client.asubmit("tell me a long story", max_tokens=50)
            await wait_for(lambda: backend.running == 1)  # generating, held at the gate
            assert (await client.ajob(job["id"]))["state"] == "running"

            reply = await client.acancel(job["id"])
            assert reply["cancelled"] is True and reply["job"]["state"] == "cancelled"
            # the generation stopped though the gate is still shut: only the cancel ended it
            await wait_for(lambda: backend.running == 0, timeout_s=10)
            assert not gate.is_set()

            # the runner goes on: the next job runs and finishes once the gate opens
            gate.set()
            second = await client.asubmit("and another", max_tokens=3)
            done = await client.aresult(second["id"], timeout_s=30, poll_s=0.05)
            assert done["state"] == "done" and done["result_text"] == "tick" * 3

            # ... and the cancelled job's result never arrived later
            first = await client.ajob(job["id"])
            assert first["state"] == "cancelled" and not first.get("result_text")
            assert peer.jobs.get(job["id"]).result_text is None
            assert len(backend.requests) == 2  # the cancelled job was not run again

            # cancelling a finished job changes nothing and says what it is
            again = await client.acancel(second["id"])
            assert again["cancelled"] is False and again["job"]["state"] == "done"
        finally:
            await client.aclose()
            await peer.stop(grace_s=0)

    run(main())


def test_job_errors_come_back_as_their_own_classes_through_client_call(tmp_path):
    async def main():
        peer = Peer(config(tmp_path, "p0"), backend=ScriptedBackend(["hi"]))
        await peer.start()
        client = Client(tmp_path / "p0")
        try:
            with pytest.raises(JobNotFound, match="no-such-job"):
                await client.ajob("no-such-job")
            with pytest.raises(JobNotFound):
                await client.acall("job.cancel", {"id": "no-such-job"}, timeout_s=5)
            info = await client.acall("info", timeout_s=5)
            assert info["peer"] == peer.identity.peer_id_text
        finally:
            await client.aclose()
            await peer.stop(grace_s=0)

    run(main())
