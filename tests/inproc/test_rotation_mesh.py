"""Key rotation in a real mesh on loopback (real RPC over CurveZMQ, real gossip, scripted
backends): a member rotates its keys while it is answering a prompt for another member,
while one of its jobs runs elsewhere and while it runs a job for another owner. Nothing
fails, the answers and results arrive, the mesh knows it under its new id, its old key
is refused everywhere, and a restart comes up with the new keys."""

import asyncio

import pytest

from mesh.client import Client
from mesh.discovery.seeds import seed_text
from mesh.errors import CertificateError, InvalidRequest, MeshError
from mesh.gossip.view import MemberView
from mesh.identity.certificate import Certificate
from mesh.identity.keys import Identity
from mesh.identity.membership import MeshMembership
from mesh.identity.rotation import RotationJournal, RotationLog, accept_rotation, rotation_request
from mesh.identity.rotation_service import rotate_here
from mesh.inference.backend import GenerationRequest
from mesh.jobs.sync import JobSyncConfig
from mesh.peer import Peer
from mesh.routing import RouteRequest
from mesh.rpc.server import Final
from mesh.testing import ScriptedBackend
from support import loopmesh
from support.loopmesh import config, run, wait_for

ASK = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
FAST = JobSyncConfig.for_tests()


def state_of(p: Peer, peer_id: str) -> str | None:
    m = by_id(p).get(peer_id)
    return m.state if m is not None else None


def by_id(p: Peer) -> dict[str, MemberView]:
    return {m.peer_id: m for m in p.membership_service.view()}


async def ask(frm: Peer, model: str) -> str:
    gen = GenerationRequest.from_prompt("hello", max_tokens=32, temperature=0.0)
    text, final = "", None
    async for ev in frm.router.ask(gen, RouteRequest.for_generation(gen, pinned_model=model)):
        if isinstance(ev, Final):
            final = ev.data
        elif isinstance(ev, dict) and ev.get("t"):
            text += ev["t"]
    assert final is not None
    return final["text"]


async def all_alive(peers) -> None:
    await wait_for(lambda: all(sum(m.state == "alive" for m in p.membership_service.view()) == len(peers)
                               for p in peers))


def fast_sync(peers):
    for p in peers:
        if p.job_sync is not None:
            p.job_sync.cfg = FAST


def test_a_member_rotates_its_keys_while_it_works_and_nothing_is_lost(tmp_path):
    async def main():
        slow_big = ScriptedBackend(["b"] * 25, delay_s=0.06, model="big", parameters=1000)
        slow_small = ScriptedBackend(["s"] * 25, delay_s=0.06, model="small", parameters=100)
        peers = await loopmesh.start_mesh(
            tmp_path, [ScriptedBackend(["a"], model="auth"), slow_big, slow_small])
        p0, p1, p2 = peers  # p0 holds the authority key; p1 rotates
        try:
            fast_sync(peers)
            await all_alive(peers)
            old_id, old_cert = p1.identity.peer_id_text, p1.certificate
            old_endpoint = p1.endpoint
            # work under way when the rotation starts:
            streaming = asyncio.create_task(ask(p2, "big"))  # p2's prompt, answered by p1
            mine = p1.jobs.submit(ASK, owner=old_id, route={"model": "small"})  # p1's job, runs on p2
            p1.job_runner.wake()
            theirs = p0.jobs.submit(ASK, owner=p0.identity.peer_id_text, route={"model": "big"})  # runs on p1
            p0.job_runner.wake()
            await wait_for(lambda: p1.jobs.get(mine.id).lease_holder == p2.identity.peer_id_text
                           and p0.jobs.get(theirs.id).lease_holder == old_id and slow_big.running > 0)

            out = await p1.rotate()
            assert out["old_peer_id"] == old_id and out["peer_id"] != old_id and out["name"] == "p1"
            with pytest.raises(InvalidRequest, match="already under way"):
                await p1.rotate()

            async def keep_asking():  # prompts only p1 can answer, back to back through the switch
                answers = []
                while not p1._rotation.done():
                    answers.append(await ask(p2, "big"))
                return answers

            during = asyncio.create_task(keep_asking())
            await asyncio.wait_for(p1._rotation, 30)
            answers = await asyncio.wait_for(during, 30)
            assert answers and all(a == "b" * 25 for a in answers)  # none failed
            new_id = p1.identity.peer_id_text
            assert new_id == out["peer_id"] and p1.endpoint == old_endpoint  # same port, new keys
            assert p1.certificate.predecessor_id == old_cert.peer_id
            assert p1.transport.public != old_cert.curve_public
            fast_sync(peers)

            # the prompt that was streaming when the rotation began finished, whole
            assert await asyncio.wait_for(streaming, 20) == "b" * 25
            # both jobs finished exactly once, each result where it belongs
            await wait_for(lambda: p1.jobs.get(mine.id).state.value == "done", 30)
            got = p1.jobs.get(mine.id)
            assert got.owner == new_id and got.result_text == "s" * 25
            await wait_for(lambda: p0.jobs.get(theirs.id).state.value == "done", 30)
            assert p0.jobs.get(theirs.id).result_text == "b" * 25
            assert len(slow_small.requests) == 1
            # (the big model served the streamed prompt, p0's job and the prompts asked meanwhile)
            assert len(slow_big.requests) == 2 + len(answers)
            assert p1.last_rotation["away_s"] < p1.last_rotation["switch_s"]

            # the mesh knows p1 under its new id; its old key is refused everywhere
            for p in (p0, p2):
                await wait_for(lambda p=p: state_of(p, new_id) == "alive", 15)
                await wait_for(lambda p=p: p.revocations.revokes(old_cert), 15)
                assert state_of(p, old_id) in (None, "left", "dead")
                assert p.verifier.certificate_for(old_cert.peer_id) is None
            # and it answers prompts under the new keys
            assert await ask(p2, "big") == "b" * 25
            assert await ask(p1, "small") == "s" * 25
            assert (tmp_path / "p1" / "rotation.json").exists() is False
            assert Identity.load(tmp_path / "p1" / "identity.key").public_raw == p1.identity.public_raw

            # a restart comes up with the new keys, in the mesh
            await p1.stop(grace_s=0)
            p1 = peers[1] = Peer(config(tmp_path, "p1", seeds=(seed_text(p0.endpoint, p0.transport.public),)),
                                 backend=ScriptedBackend(["b"], model="big", parameters=1000))
            await p1.start()
            assert p1.identity.peer_id_text == new_id
            await wait_for(lambda: state_of(p0, new_id) == "alive", 15)
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=180)


def test_the_authoritys_own_peer_rotates_and_a_stolen_old_key_cannot_rotate_again(tmp_path):
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
        p0, p1 = peers
        try:
            await all_alive(peers)
            old = p0.certificate
            thief_keys = Identity(p0.identity.private_key)  # what a thief who copied identity.key holds
            out = await p0.rotate()
            await asyncio.wait_for(p0._rotation, 30)
            assert p0.identity.peer_id_text == out["peer_id"]
            await wait_for(lambda: state_of(p1, out["peer_id"]) == "alive", 15)
            await wait_for(lambda: p1.revocations.revokes(old), 15)
            # the old key's calls are refused: the thief's frames say revoked
            from mesh.identity.transport import TransportKeys
            from mesh.rpc.client import RpcClient
            from mesh.rpc.codec import FrameCodec
            from mesh.rpc.zap import CurveClient

            stolen_transport = TransportKeys.load(tmp_path / "p0" / "transport.key")  # the new one: no help
            codec = FrameCodec(thief_keys, p1.keys, config=p1.config.rpc, credential=old.to_bytes(),
                               credentials=p1.keys.certified_peer)
            client = RpcClient(codec=codec, endpoint=p1.endpoint, ctx=p1._ctx,
                               curve=CurveClient(stolen_transport, p1.transport.public))
            client.connect()
            try:
                with pytest.raises(MeshError):
                    await client.call("ping", {}, timeout_s=3)
            finally:
                await client.close()
            # and it cannot rotate again to a key of its own: the authority remembers
            journal = RotationJournal.begin(old.peer_public)
            args = rotation_request(journal.identity, journal.transport.public, old_public=old.peer_public,
                                    mesh_id=old.mesh_id)
            with pytest.raises(CertificateError, match="already rotated"):
                rotate_here(p0.data, args, old, now=old.issued_at + 10)
            assert RotationLog.load(p0.data.rotations).rotated_to(old.peer_public) == p0.identity.public_raw
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=120)


async def answered_journal(authority: Peer, member: Peer) -> Certificate:
    """What ``member``'s rotation.json holds once the authority answered, before the switch."""
    old = member.certificate
    journal = RotationJournal.begin(old.peer_public)
    journal.save(member.data.rotation_journal)
    args = rotation_request(journal.identity, journal.transport.public, old_public=old.peer_public,
                            mesh_id=old.mesh_id)
    reply = await member.pool.client(authority.endpoint).call("mesh.rotate", args, timeout_s=5)
    cert, rev = accept_rotation(reply, current=old, new_public=journal.identity.public_raw,
                                new_curve=journal.transport.public,
                                authority_public_raw=member.membership.authority_public, now=old.issued_at + 5)
    journal.issued(cert, rev).save(member.data.rotation_journal)
    return cert


def test_a_rotation_answered_but_not_switched_is_finished_by_the_next_mesh_rotate(tmp_path):
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
        p0, p1 = peers
        try:
            await all_alive(peers)
            cert = await answered_journal(p0, p1)  # the switch never ran (it failed before installing)
            out = await p1.rotate()  # the authority would refuse new keys now: the journalled answer is used
            assert out["peer_id"] == cert.peer_id_text
            await asyncio.wait_for(p1._rotation, 30)
            assert p1.identity.peer_id_text == cert.peer_id_text
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=120)


def test_a_rotation_interrupted_after_the_authority_answered_finishes_at_the_next_start(tmp_path):
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
        p0, p1 = peers
        try:
            await all_alive(peers)
            old = p1.certificate
            # p1 asked and was answered, then died before switching (the journal is all it kept)
            cert = await answered_journal(p0, p1)
            await p1.stop(grace_s=0)
            assert MeshMembership.load(p1.data.membership).certificate == old.to_bytes()  # not installed yet

            p1 = peers[1] = Peer(config(tmp_path, "p1", seeds=(seed_text(p0.endpoint, p0.transport.public),)),
                                 backend=ScriptedBackend(model="m1"))
            await p1.start()
            assert p1.identity.peer_id_text == cert.peer_id_text
            assert Certificate.from_bytes(p1.membership.certificate).predecessor == old.peer_public
            assert not p1.data.rotation_journal.exists()
            await wait_for(lambda: state_of(p0, cert.peer_id_text) == "alive", 15)
            await wait_for(lambda: p0.revocations.revokes(old), 15)
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=120)


def test_without_the_authority_online_rotation_is_refused_and_retried_with_the_same_keys(tmp_path):
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
        p0, p1 = peers
        try:
            await all_alive(peers)
            old_id = p1.identity.peer_id_text
            await p0.stop(grace_s=0)  # the device holding the authority key goes away
            await wait_for(lambda: state_of(p1, p0.identity.peer_id_text) == "left", 10)
            with pytest.raises(MeshError, match="no live member holds the mesh authority key"):
                await p1.rotate()
            assert p1.identity.peer_id_text == old_id and p1._rotation is None  # still serving as before
            pending = RotationJournal.load(p1.data.rotation_journal)
            assert pending is not None and not pending.certificate  # kept: the next try uses these keys
            p0 = peers[0] = Peer(config(tmp_path, "p0", seeds=(seed_text(p1.endpoint, p1.transport.public),)),
                                 backend=ScriptedBackend(model="m0"))
            await p0.start()
            await wait_for(lambda: state_of(p1, p0.identity.peer_id_text) == "alive"
                           and getattr(by_id(p1)[p0.identity.peer_id_text].meta, "renew", False), 15)
            out = await p1.rotate()
            assert out["peer_id"] == pending.identity.peer_id_text  # the keys journalled at the first try
            await asyncio.wait_for(p1._rotation, 30)
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=120)


def test_the_local_client_keeps_answering_through_the_switch(tmp_path):
    """The mesh CLI and the embeddable client talk to their own peer's RPC server, which
    is rebound with the new keys: a prompt asked while that happens is asked again at
    the new keys (the peer file says where), never left hanging to its deadline."""
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model="m0"),
                                                     ScriptedBackend(["a"] * 5, delay_s=0.01, model="m1")])
        p0, p1 = peers
        try:
            await all_alive(peers)
            client = Client(p1.data.root, timeout_s=60)
            assert (await client.aask("hi", max_tokens=8, model="m1")).text == "a" * 5
            await p1.rotate()
            answers = []
            while not p1._rotation.done():
                answers.append((await asyncio.wait_for(client.aask("hi", max_tokens=8, model="m1"), 30)).text)
            await p1._rotation
            answers.append((await client.aask("hi", max_tokens=8, model="m1")).text)
            assert len(answers) >= 2 and set(answers) == {"a" * 5}
            await client.aclose()
        finally:
            for p in reversed(peers):
                await p.stop(grace_s=0)

    run(main(), timeout_s=120)
