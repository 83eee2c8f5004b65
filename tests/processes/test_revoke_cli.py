"""`mesh revoke` end to end: two real mesh-peer processes; the authority's device revokes
the other, which every peer then refuses; anywhere else the command refuses clearly."""

import json

import pytest

from support.peerproc import PeerProcess, run_mesh
from support.peerproc import wait_until as wait

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


def members(data_dir) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    return {m["name"]: m for m in json.loads(r.stdout)}


def turned_away(rpc: dict) -> int:
    return rpc["rejections"]["revoked"] + rpc["handshakes_refused"]


def test_mesh_revoke(tmp_path):
    a = PeerProcess(tmp_path / "a", "--name", "hub")
    b = None
    try:
        info = a.wait_ready()
        r = run_mesh("invite", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
        b = PeerProcess(tmp_path / "b", "--name", "laptop", "--join-token", r.stdout.strip(),
                        "--join", info["endpoint"].removeprefix("tcp://"))
        b.wait_ready()
        wait(lambda: members(a.data_dir).get("laptop", {}).get("state") == "alive")

        r = run_mesh("revoke", "hub", data_dir=b.data_dir)  # not where the authority key is
        assert r.returncode == 1 and "authority key" in r.stderr
        r = run_mesh("revoke", "nobody", data_dir=a.data_dir)
        assert r.returncode == 2 and "no member" in r.stderr
        r = run_mesh("revoke", "laptop", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
        assert "revoked laptop" in r.stdout
        m = members(a.data_dir)["laptop"]
        assert m["state"] == "dead" and m["revoked"] is True
        assert (a.data_dir / "revocations.json").exists()
        # the laptop keeps gossiping with its revoked certificate: refused, and counted
        # (frame by frame over a connection it had, or at the handshake of a new one)
        wait(lambda: turned_away(json.loads(run_mesh("info", "--json", data_dir=a.data_dir).stdout)["rpc"]) > 0, 30)
        r = run_mesh("revoke", "laptop", "--json", data_dir=a.data_dir)
        assert r.returncode == 0 and json.loads(r.stdout)["already"] is True
    finally:
        if b is not None:
            b.stop()
        a.stop()
