"""Revocation in a real mesh on loopback (scripted backends): the authority revokes p2;
within seconds every peer refuses its calls and its gossip and shows it dead and revoked;
restarts keep it that way, on both sides."""

import asyncio
import shutil
import time

import pytest

from mesh.discovery.seeds import seed_text
from mesh.errors import CertificateError, InvalidRequest, MeshError
from mesh.gossip.view import MemberView
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support import loopmesh
from support.loopmesh import config, run, wait_for


def _seed(peer) -> str:
    """Where to join ``peer``: its address and transport key (connections are encrypted)."""
    return seed_text(peer.endpoint, peer.transport.public)


def view(p: Peer) -> dict[str, MemberView]:
    return {m.name: m for m in p.membership_service.view()}


def states(p: Peer) -> dict[str, str]:
    return {n: m.state for n, m in view(p).items()}


def refused(p: Peer) -> int:
    return p.server.codec.rejections.snapshot()["revoked"]


def turned_away(p: Peer) -> int:
    """Everything of a revoked member refused: frames, and handshakes over its transport key."""
    return refused(p) + p.server.handshakes_refused


async def ping(frm: Peer, to: Peer) -> dict:
    return await frm.pool.client(to.endpoint).call("ping", {}, timeout_s=3)


def test_revoked_peer_is_refused_everywhere_and_stays_refused_after_restarts(tmp_path):
    async def main():
        peers = await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model=f"m{i}") for i in range(3)])
        p0, p1, p2 = peers
        try:
            await wait_for(lambda: all(states(p) == {"p0": "alive", "p1": "alive", "p2": "alive"} for p in peers))
            await ping(p2, p1)  # a member in good standing
            with pytest.raises(InvalidRequest):
                p1.revocation_service.revoke("p2")  # p1 holds no authority key
            with pytest.raises(InvalidRequest):
                p0.revocation_service.revoke("p0")  # the authority's own peer
            with pytest.raises(InvalidRequest):
                p0.revocation_service.revoke("nobody")

            before = turned_away(p1)
            started = time.monotonic()
            out = p0.revocation_service.revoke("p2")
            assert out["name"] == "p2" and out["peer_id"] == p2.identity.peer_id_text and not out["already"]
            assert p0.revocation_service.revoke(p2.identity.peer_id_text[:8])["already"]
            # p1 learns it within seconds: p2 is dead and shown revoked
            await wait_for(lambda: view(p1)["p2"].state == "dead" and view(p1)["p2"].revoked, 10)
            assert view(p0)["p2"].state == "dead" and view(p0)["p2"].revoked
            elapsed = time.monotonic() - started
            assert elapsed < 5
            assert (tmp_path / "p1" / "revocations.json").exists()
            # p2's calls are refused (and it is told why at once, not left to its deadline)
            with pytest.raises(MeshError, match="revoked"):
                await ping(p2, p1)
            # what it sends is refused and counted (frame by frame over a connection it
            # already had, or at the handshake of a new one); the others stay alive
            await wait_for(lambda: turned_away(p1) > before, 10)
            await asyncio.sleep(1.0)
            assert states(p1)["p0"] == "alive" and states(p0)["p1"] == "alive"
            assert states(p1)["p2"] == "dead" and states(p0)["p2"] == "dead"
            await ping(p1, p0)

            # p2 restarts with its old certificate. Had it heard of its own revocation,
            # it says so and does not start:
            await p2.stop()
            shutil.copy(tmp_path / "p0" / "revocations.json", tmp_path / "p2" / "revocations.json")
            again = Peer(config(tmp_path, "p2", seeds=(_seed(p0), _seed(p1))), backend=ScriptedBackend())
            with pytest.raises(CertificateError, match="revoked"):
                await again.start()
            # one that never heard of it starts, and is still refused by everyone
            (tmp_path / "p2" / "revocations.json").unlink()
            # p1 restarts too: it keeps the revocation from its file
            await p1.stop()
            p1 = peers[1] = Peer(config(tmp_path, "p1", seeds=(_seed(p0),)), backend=ScriptedBackend())
            await p1.start()
            assert len(p1.revocations) == 1
            p2 = peers[2] = Peer(config(tmp_path, "p2", seeds=(_seed(p0), _seed(p1))), backend=ScriptedBackend())
            await p2.start()
            await wait_for(lambda: states(p1).get("p0") == "alive" and states(p0).get("p1") == "alive")
            await wait_for(lambda: turned_away(p0) > 0 and turned_away(p1) > 0, 10)
            with pytest.raises(MeshError, match="revoked"):
                await ping(p2, p0)
            # new connections over its transport key do not even complete their handshake now
            await wait_for(lambda: p0.server.handshakes_refused > 0, 10)
            await asyncio.sleep(1.5)
            for p in (p0, p1):
                assert states(p).get("p2") in (None, "dead")
            assert "p2" not in {n for n, s in states(p1).items() if s == "alive"}
        finally:
            for p in peers:
                await p.stop()
    run(main())
