"""mDNS inside ``mesh-peer``: members of one mesh that know nothing of each other (no
``--join``, no join token, no remembered peers, no seeds in ``mesh.json``) find each
other by mDNS alone; with multicast filtered they do not, until a seed is given.

Every other multi-host test enrols with a join token, whose endpoint the peer remembers
(``known_peers.json``) and so could find the mesh without mDNS. Here each peer enrols,
stops, has everything it remembered about others deleted, and starts again with nothing
but mDNS to go on. The peers run ``--no-model``: nothing here generates.
"""

from __future__ import annotations

import json
import time

import pytest

from support import netns
from support.meshhosts import PORT, Host, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns]

lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made

NAMES = {"h0", "h1", "h2"}
# mDNS discovery converges in under 5 s here (test_netns_mdns.py); silence for four
# times that, with every peer browsing and announcing, is silence for good.
BLOCKED_WINDOW_S = 20.0


def enrolled_strangers(lab, tmp_path) -> list[Host]:
    """Three members of one mesh, stopped, each knowing nothing of the others."""
    hosts = [Host(lab[i], tmp_path, f"h{i}") for i in range(3)]
    hosts[0].start("--no-model")
    try:
        for h in hosts[1:]:
            h.start("--no-model", "--join-token", hosts[0].invite())
    finally:
        for h in hosts:
            h.stop()
    for h in hosts:
        forget_everyone(h)
    return hosts


def forget_everyone(h: Host) -> None:
    """Delete what ``h`` remembers of other peers: ``known_peers.json`` (addresses gossip
    and the join token taught it) and the seeds its enrolment wrote into ``mesh.json``."""
    (h.data / "known_peers.json").unlink(missing_ok=True)
    membership = h.data / "mesh.json"
    doc = json.loads(membership.read_text())
    doc["seeds"] = []
    membership.write_text(json.dumps(doc))
    assert not (h.data / "known_peers.json").exists()


def members(h: Host) -> set[str]:
    """Who ``h`` lists (``mesh peers``); a failing CLI fails the test instead of reading as nobody."""
    return {m["name"] for m in json.loads(h.mesh("peers", "--json").stdout)}


def all_alive(hosts: list[Host]) -> bool:
    return all(h.states() == dict.fromkeys(NAMES, "alive") for h in hosts)


def test_peers_that_know_nothing_of_each_other_meet_by_mdns(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = enrolled_strangers(lab, tmp_path)
    try:
        for h in hosts:
            h.start("--no-model")  # no --join, no token: mDNS is on (the default outside tests)
        took = wait_until(lambda: all_alive(hosts), "all three list each other alive, found by mDNS alone", 45)
        print(f"\n[peer mdns] three strangers of one mesh list each other alive {took:.1f} s after the last start")
    finally:
        for h in hosts:
            h.stop()


def test_with_multicast_blocked_they_stay_apart_until_given_a_seed(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = enrolled_strangers(lab, tmp_path)
    for ns in lab:
        lab.block_multicast(ns)
    try:
        for h in hosts:
            h.start("--no-model")
        t0 = time.monotonic()
        while time.monotonic() - t0 < BLOCKED_WINDOW_S:  # the claim is an absence: watch the whole window
            for h in hosts:
                seen = members(h)
                assert seen == {h.name}, f"{h.name} found {seen} with multicast blocked"
            time.sleep(1.0)

        # positive control: the same peers, given one seed (h0, with its transport key), meet
        key = json.loads(hosts[0].mesh("info", "--json").stdout)["transport_key"]
        for h in hosts[1:]:
            h.stop()
            h.start("--no-model", "--join", f"{lab[0].ip}:{PORT}@{key}")
        wait_until(lambda: all_alive(hosts), "all three alive once h1 and h2 are given h0 as a seed", 45)
    finally:
        for h in hosts:
            h.stop()
