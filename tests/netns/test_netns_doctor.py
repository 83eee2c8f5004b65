"""``mesh doctor`` on real hosts: mesh-peer processes in network namespaces (tests/netns.py),
one of them on a LAN that filters multicast, one of another mesh. The doctor must name
the cause and the fix. Every namespace is removed afterwards, pass or fail."""

from __future__ import annotations

import json
import time

import pytest

from support import netns
from support.meshhosts import PORT, Host, build_mesh, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns, pytest.mark.model]


lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made


def doctor(host: Host, *args: str) -> tuple[int, dict, float]:
    t0 = time.monotonic()
    r = host.mesh("doctor", "--wait", "3", "--timeout", "2", "--json", *args, check=False)
    took = time.monotonic() - t0
    assert r.stdout, f"doctor printed nothing: {r.stderr}"
    return r.returncode, json.loads(r.stdout), took


def by_code(doc: dict, code: str) -> list[dict]:
    return [f for f in doc["findings"] if f["code"] == code]


def test_doctor_names_blocked_multicast_a_closed_port_and_another_mesh(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = build_mesh(lab, tmp_path, 2, blocked={1})  # h1's LAN filters multicast; it came in by --join h0
    stranger = Host(lab[2], tmp_path, "other")  # its own mesh, on the same LAN
    stranger.start()
    h0, h1 = hosts
    try:
        wait_until(lambda: h1.states() == {"h0": "alive", "h1": "alive"}, "h1 reaches h0 through --join")
        h0_addr = f"{lab[0].ip}:{PORT}"

        # on the blocked host: h0 answers over TCP but is never heard over mDNS
        rc, doc, took = doctor(h1, "--join", h0_addr)
        assert rc == 1 and doc["ok"] is False
        (f,) = by_code(doc, "multicast_blocked")
        assert lab[0].ip in f["subject"] and f"--join {h0_addr}" in f["next"], f
        assert "multicast is blocked" in f["next"]
        assert took < 20

        # the text form says the same, for a person
        text = h1.mesh("doctor", "--wait", "2", "--timeout", "2", "--join", h0_addr, check=False)
        words = " ".join(text.stdout.split())  # undo the line wrapping
        assert text.returncode == 1 and "multicast_blocked" in words and f"--join {h0_addr}" in words

        # on h0: a closed port, a peer of another mesh (heard on the LAN and asked directly), and h1 unheard
        other_mesh = json.loads((stranger.data / "peer.json").read_text())["mesh_id"]
        ours = json.loads((h0.data / "peer.json").read_text())["mesh_id"]
        assert other_mesh != ours
        rc, doc, _ = doctor(h0, "--join", f"{lab[1].ip}:7499", "--join", f"{lab[2].ip}:{PORT}")
        assert rc == 1
        (closed,) = by_code(doc, "port_closed")
        assert f"{lab[1].ip}:7499" in closed["subject"] and "refused" in closed["seen"]
        foreign = by_code(doc, "other_mesh")
        assert foreign and all(other_mesh in f["seen"] for f in foreign) and lab[2].ip in foreign[0]["subject"], json.dumps(doc)
        assert any(f["subject"].startswith(lab[1].ip) for f in by_code(doc, "multicast_blocked"))
        assert not by_code(doc, "clock_skew") and not by_code(doc, "duplicate_peer_id")
    finally:
        for h in [*hosts, stranger]:
            h.stop()
