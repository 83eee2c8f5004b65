"""`mesh rotate` end to end: two real mesh-peer processes (the real model). The member
rotates its keys while it runs; the mesh knows it under its new id and its name, its old
key is refused, it answers prompts pinned to it, and it comes back with the new keys
after a restart. The authority's own peer rotates too."""

import json

import pytest

from mesh.client import Client
from support.peerproc import PeerProcess, run_mesh
from support.peerproc import wait_until as wait

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


def members(data_dir) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    return {m["peer_id"]: m for m in json.loads(r.stdout)}


def info(data_dir) -> dict:
    r = run_mesh("info", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_mesh_rotate(tmp_path):
    a = PeerProcess(tmp_path / "a", "--name", "hub")
    b = None
    try:
        hub = a.wait_ready()
        r = run_mesh("invite", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
        b = PeerProcess(tmp_path / "b", "--name", "laptop", "--join-token", r.stdout.strip(),
                        "--join", hub["endpoint"].removeprefix("tcp://"))
        old = b.wait_ready()
        wait(lambda: members(a.data_dir).get(old["peer_id"], {}).get("state") == "alive")

        app = Client(b.data_dir, timeout_s=60)  # an application's long-lived client of the laptop's peer
        # pinned to the laptop (peer=): with the same model on both, the router may send it to the hub
        # (local_only only keeps a prompt out of the cloud; it pins nothing, and CI once got the hub with it)
        assert app.ask("Say hi.", max_tokens=2, temperature=0.0, no_escalate=True, peer=old["peer_id"]).peer == old["peer_id"]
        r = run_mesh("rotate", "--wait", "60", data_dir=b.data_dir)
        assert r.returncode == 0, r.stderr + b.log()[-3000:]
        assert "rotated the keys of this peer" in r.stdout and old["peer_id"] in r.stdout
        assert "join here with" in r.stdout and "need the new key" in r.stderr
        # the same client object follows the peer to its new keys
        assert app.ask("Say hi.", max_tokens=2, temperature=0.0, no_escalate=True).text
        mine = info(b.data_dir)
        new_id = mine["peer"]
        assert new_id != old["peer_id"] and new_id in r.stdout
        assert mine["certificate"]["predecessor"] == old["peer_id"] and mine["certificate"]["rotations"] == 1
        assert mine["answers"] == 2 and mine["uptime_s"] > 1  # the process's (both asks above), not the new stack's
        status = run_mesh("status", data_dir=b.data_dir)
        assert status.returncode == 0 and f"rotated from {old['peer_id'][:12]}" in status.stdout, status.stdout
        doc = json.loads((b.data_dir / "peer.json").read_text())
        assert doc["endpoint"] == old["endpoint"] and doc["transport_key"] != old["transport_key"]
        assert not (b.data_dir / "rotation.json").exists()

        # the hub knows the laptop under its new id; the old one is revoked
        wait(lambda: members(a.data_dir).get(new_id, {}).get("state") == "alive", 30)
        wait(lambda: members(a.data_dir).get(old["peer_id"], {}).get("revoked") is True, 30)
        assert members(a.data_dir)[old["peer_id"]]["replaced_by"] == new_id
        table = run_mesh("peers", data_dir=a.data_dir).stdout
        assert f"rotated -> {new_id[:12]}" in table, table
        # a prompt pinned to the laptop by name reaches it under its new keys
        r = run_mesh("ask", "--json", "--peer", "laptop", "--max-tokens", "4", "--temperature", "0",
                     "--no-escalate", "Say hi.", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["peer"] == new_id

        # the authority's own peer rotates too (it certifies itself)
        r = run_mesh("rotate", "--json", "--wait", "60", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr + a.log()[-3000:]
        out = json.loads(r.stdout)
        assert out["switched"] and out["old_peer_id"] == hub["peer_id"] and out["join"].endswith(out["transport_key"])
        wait(lambda: members(b.data_dir).get(out["peer_id"], {}).get("state") == "alive", 30)
        wait(lambda: members(b.data_dir).get(hub["peer_id"], {}).get("revoked") is True, 30)

        # a restart comes up with the new keys, in the mesh
        b.stop()
        b = PeerProcess(tmp_path / "b", "--name", "laptop")
        assert b.wait_ready()["peer_id"] == new_id
        try:
            wait(lambda: members(a.data_dir).get(new_id, {}).get("state") == "alive", 60)
        except AssertionError:
            print(b.log()[-4000:], a.log()[-4000:], (b.data_dir / "known_peers.json").read_text())
            raise
    finally:
        if b is not None:
            b.stop()
        a.stop()
