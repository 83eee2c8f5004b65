"""Real hosts: one `mesh-peer` process per network namespace on a bridge, real mDNS,
real faults (kill -9, a cable pulled, multicast filtered). Every namespace is removed
afterwards, pass or fail (tests/netns.py)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from support import netns
from support.meshhosts import PORT, Host, build_mesh, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns]


lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made


def test_mdns_discovery_join_seed_failure_restart_partition(lab_factory, tmp_path):
    lab = lab_factory(4)
    # h3's LAN filters multicast: it can only come in through --join
    hosts = build_mesh(lab, tmp_path, 4, blocked={3})
    try:
        names = {h.name for h in hosts}
        wait_until(lambda: all(h.states() == {n: "alive" for n in names} for h in hosts),
                   "all four list each other alive (three by mDNS, one by --join)")
        before = hosts[0].peers()["h2"]["incarnation"]

        # kill -9: suspected, then agreed dead by everyone else
        hosts[2].kill9()
        wait_until(lambda: all(h.states().get("h2") == "dead" for h in hosts if h is not hosts[2]),
                   "the others mark h2 dead")

        # it restarts and replaces its old entry with a higher incarnation, no ghost
        hosts[2].start()
        wait_until(lambda: all(h.states().get("h2") == "alive" for h in hosts), "h2 alive again everywhere")
        assert hosts[0].peers()["h2"]["incarnation"] > before
        assert all(len(h.peers()) == 4 for h in hosts)

        # partition h1 off, then heal: the mesh converges again
        lab.link_down(lab[1])
        wait_until(lambda: hosts[0].states().get("h1") in ("suspect", "dead"), "h0 stops trusting h1")
        lab.link_up(lab[1])
        wait_until(lambda: all(h.states() == {n: "alive" for n in names} for h in hosts),
                   "all alive again after the partition heals")

        # a gray failure: h3 stalls (SIGSTOP) and is suspected; resumed, it refutes and
        # is alive again with a higher incarnation instead of staying dead
        inc = hosts[0].peers()["h3"]["incarnation"]
        hosts[3].proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: hosts[0].states().get("h3") in ("suspect", "dead"), "h0 suspects the stalled h3")
        finally:
            hosts[3].proc.send_signal(signal.SIGCONT)
        wait_until(lambda: all(h.states() == {n: "alive" for n in names} for h in hosts), "h3 alive after SIGCONT")
        assert hosts[0].peers()["h3"]["incarnation"] > inc
    finally:
        for h in hosts:
            h.stop()


def test_other_mesh_on_the_same_lan_is_ignored(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = build_mesh(lab, tmp_path, 2)
    stranger = Host(lab[2], tmp_path, "other")  # creates its own mesh, on the same LAN
    key = json.loads(hosts[0].mesh("info", "--json").stdout)["transport_key"]  # as `mesh status` shows it
    stranger.start("--join", f"{lab[0].ip}:{PORT}@{key}")
    try:
        wait_until(lambda: all(h.states() == {"h0": "alive", "h1": "alive"} for h in hosts), "the mesh forms")
        time.sleep(3)
        assert all("other" not in h.states() for h in hosts)
        assert set(stranger.states()) == {"other"}
        refused = json.loads(hosts[0].mesh("info", "--json").stdout)["rpc"]["rejections"]
        assert refused["bad_credential"] >= 1
    finally:
        for h in [*hosts, stranger]:
            h.stop()
