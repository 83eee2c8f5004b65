"""Several real peers in one process on loopback (scripted backends): they join through
seeds, gossip their state, see a clean leave, and refuse a peer of another mesh."""

import asyncio

from mesh.discovery.seeds import seed_text
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support import loopmesh
from support.loopmesh import config, run, wait_for


def states(p: Peer) -> dict[str, str]:
    return {m.name: m.state for m in p.membership_service.view()}


async def start_mesh(tmp_path, n):
    return await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model=f"m{i}") for i in range(n)])


def test_peers_find_each_other_gossip_meta_and_leave(tmp_path):
    async def main():
        peers = await start_mesh(tmp_path, 3)
        try:
            names = {"p0", "p1", "p2"}
            await wait_for(lambda: all(states(p) == {n: "alive" for n in names} for p in peers))
            # capabilities travel in the owner-signed record
            view = {m.name: m for m in peers[0].membership_service.view()}
            assert view["p2"].models[0].name == "m2"
            assert view["p2"].meta.hw.cpu_count >= 1
            await peers[2].stop()
            await wait_for(lambda: all(states(p).get("p2") == "left" for p in peers[:2]))
        finally:
            for p in peers:
                await p.stop()
    run(main())


def test_a_peer_of_another_mesh_is_never_admitted(tmp_path):
    async def main():
        peers = await start_mesh(tmp_path, 2)
        # it knows p0's transport key (say, from mDNS): the certificate is what refuses it
        seed = seed_text(peers[0].endpoint, peers[0].transport.public)
        stranger = Peer(config(tmp_path, "x", seeds=(seed,)), backend=ScriptedBackend())
        await stranger.start()  # creates its own mesh, then tries to join ours through p0
        try:
            await wait_for(lambda: all(states(p) == {"p0": "alive", "p1": "alive"} for p in peers))
            await asyncio.sleep(1.0)
            assert "x" not in states(peers[0]) and "x" not in states(peers[1])
            assert set(states(stranger)) == {"x"}
            assert peers[0].server.codec.rejections.snapshot()["bad_credential"] >= 1
        finally:
            for p in [*peers, stranger]:
                await p.stop()
    run(main())


def test_restart_rejoins_through_remembered_addresses_and_lossy_gossip_keeps_everyone(tmp_path):
    from mesh.rpc.faults import FaultConfig

    async def main():
        peers = await start_mesh(tmp_path, 3)
        try:
            await wait_for(lambda: all(len(states(p)) == 3 and set(states(p).values()) == {"alive"} for p in peers))
            # p2 goes away and comes back with no seed: it finds the mesh through the
            # addresses it remembered (known_peers.json), and replaces its old entry
            await peers[2].stop()
            assert (tmp_path / "p2" / "known_peers.json").exists()
            again = Peer(config(tmp_path, "p2", faults=FaultConfig(loss=0.05, seed=3)), backend=ScriptedBackend())
            await again.start()
            peers[2] = again
            await wait_for(lambda: all(states(p) == {"p0": "alive", "p1": "alive", "p2": "alive"} for p in peers))
            # 5% of p2's gossip is lost: nobody is ever declared dead over many periods
            for _ in range(30):
                await asyncio.sleep(0.1)
                assert all(set(states(p).values()) == {"alive"} for p in peers)
            assert again.membership_service.faults.dropped > 0
        finally:
            for p in peers:
                await p.stop()
    run(main())


def test_load_reaches_the_view_without_re_signing_the_record(tmp_path):
    """Load travels outside the signed record (mesh.gossip.load): a change at p2 shows in
    the others' MemberView.meta.load, and p2's record is not re-signed for it."""
    from mesh.inference.backend import Load

    async def main():
        peers = await start_mesh(tmp_path, 3)
        try:
            await wait_for(lambda: all(len(states(p)) == 3 for p in peers))
            busy = peers[2]
            version = busy.membership_service.swim.own_record.version
            busy.backend.load = lambda: Load(running=1, waiting=3)  # as if requests started

            def seen(p):
                view = {m.name: m for m in p.membership_service.view()}
                return view["p2"].meta is not None and (view["p2"].meta.load.running, view["p2"].meta.load.waiting) == (1, 3)
            await wait_for(lambda: all(seen(p) for p in peers))
            assert busy.membership_service.swim.own_record.version == version
        finally:
            for p in peers:
                await p.stop()
    run(main())
