"""Routing across real peers in one process (loopback RPC, gossip, scripted backends):
load spreading, sticky sessions, escalation to a stronger model and to the cloud,
local-only, and a peer failing mid-stream."""

import asyncio
from collections import Counter

from mesh.client import Client
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support.loopmesh import run, start_mesh, wait_for


async def mesh_of(tmp_path, backends: list, *, cloud=None) -> list[Peer]:
    peers = await start_mesh(tmp_path, backends, cloud=cloud)
    n = len(peers)
    await wait_for(lambda: all(
        sum(1 for m in p.membership_service.view() if m.state == "alive" and m.models) == n
        for p in peers))
    return peers


async def stop_all(peers):
    for p in peers:
        await p.stop()


def client_for(p: Peer) -> Client:
    c = Client(p.data.root)
    return c


def test_requests_spread_across_peers_and_sessions_stick(tmp_path):
    async def main():
        backends = [ScriptedBackend(["w"] * 20, delay_s=0.02, model="m", parameters=100, queue_limit=8)
                    for _ in range(3)]
        peers = await mesh_of(tmp_path, backends)
        try:
            c = client_for(peers[0])
            answers = await asyncio.gather(*(c.aask("hi", max_tokens=20) for _ in range(9)))
            by_peer = Counter(a.peer for a in answers)
            assert len(by_peer) >= 2, by_peer  # not all herded onto one peer
            assert all(a.route and a.route.get("choice") for a in answers)
            sticky = [await c.aask("hi", max_tokens=2, session="conv-1") for _ in range(5)]
            assert len({a.peer for a in sticky}) == 1
            await c.aclose()
        finally:
            await stop_all(peers)
    run(main())


def test_low_confidence_escalates_to_a_stronger_model_then_the_cloud(tmp_path):
    async def main():
        small = [ScriptedBackend(["meh"], model="small", parameters=135, confidence=0.3) for _ in range(2)]
        big = ScriptedBackend(["better"], model="big", parameters=1000, confidence=0.6)
        cloud = ScriptedBackend(["best"], model="cloud-model", confidence=0.95)
        peers = await mesh_of(tmp_path, [*small, big], cloud=cloud)
        try:
            c = client_for(peers[0])
            steps = []
            a = await c.aask("hard question", max_tokens=4, model="small", on_step=steps.append)
            assert [p["model"] for p in a.path] == ["small", "big", "cloud-model"]
            assert a.text == "best" and a.model == "cloud-model" and a.escalated
            assert any(s.get("restart") for s in steps)  # the streaming caller was told text is replaced
            # local-only: the cloud is never asked, the best mesh answer is kept
            asked = len(cloud.requests)
            a = await c.aask("private", max_tokens=4, model="small", local_only=True)
            assert len(cloud.requests) == asked
            assert a.model == "big" and [p["model"] for p in a.path] == ["small", "big"]
            # no escalation: the first answer as it is
            a = await c.aask("quick", max_tokens=4, model="small", no_escalate=True)
            assert a.model == "small" and len(a.path) == 1
            # a confident first answer stops the ladder
            a = await c.aask("easy", max_tokens=4, model="small", threshold=0.2)
            assert a.model == "small" and not a.escalated
            await c.aclose()
        finally:
            await stop_all(peers)
    run(main())


def test_a_peer_failing_mid_stream_is_replaced(tmp_path):
    async def main():
        fast = ScriptedBackend(["x"] * 200, delay_s=0.02, model="m", parameters=100, tokens_per_s=1000)
        slower = ScriptedBackend(["y"] * 5, model="m", parameters=100, tokens_per_s=5)
        entry = ScriptedBackend(["z"], model="tiny", parameters=1, context_length=64)  # cannot fit the prompt
        peers = await mesh_of(tmp_path, [entry, fast, slower])
        try:
            c = client_for(peers[0])
            steps = []
            task = asyncio.create_task(c.aask("go", max_tokens=200, on_step=steps.append, no_escalate=True))
            await wait_for(lambda: fast.running == 1)  # routed to the faster peer, streaming
            await peers[1].server.close(grace_s=0)  # which goes away mid-stream
            a = await asyncio.wait_for(task, 20)
            assert a.peer == peers[2].identity.peer_id_text and a.text == "yyyyy"
            assert steps[-1]["restart"] and steps[-1]["attempt"] == 1  # told the text was replaced
            # pinned to a peer that is gone: a clear error, never a hang
            try:
                await asyncio.wait_for(c.aask("go", max_tokens=5, peer=peers[1].identity.peer_id_text[:10]), 20)
            except Exception as e:
                assert "could answer" in str(e) or "shutting down" in str(e), e
            else:
                raise AssertionError("a request pinned to a closed peer answered")
            await c.aclose()
        finally:
            await stop_all(peers)
    run(main())
