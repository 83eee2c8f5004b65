"""Real mDNS between hosts: one ``python -m mesh.discovery`` process per network namespace.

Three namespaces of one mesh must find each other with no configuration; a fourth of
another mesh is ignored (and counted); a fifth with multicast blocked sees nobody and
is seen by nobody. Also tests of the namespace harness itself: partitions, cleanup of
a crashed run's leftovers.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mesh.identity.keys import Identity
from support import netns

netns_lab = netns.netns_lab  # the namespace fixture, for the tests below

MESH = "testmesh0001"
OTHER = "othermesh0002"
SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 9009))
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""
CRASHING_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from support import netns
lab = netns.Lab(2)
print(lab.tag, flush=True)
time.sleep(60)
"""


class Announcer:
    """``python -m mesh.discovery`` in a namespace; its JSON lines, stamped on arrival."""

    def __init__(self, ns: netns.Namespace, *, mesh: str, port: int, peer_id: str | None = None) -> None:
        self.ns = ns
        self.peer_id = peer_id or Identity.generate().peer_id_text
        self.port = port
        self.events: list[tuple[float, dict]] = []
        self.launched = time.monotonic()
        self.proc = ns.popen(
            [sys.executable, "-m", "mesh.discovery", "--mesh", mesh, "--id", self.peer_id,
             "--ip", ns.ip, "--port", str(port), "--seconds", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.append((time.monotonic(), json.loads(line)))

    @property
    def address(self) -> str:
        return f"tcp://{self.ns.ip}:{self.port}"

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in list(self.events) if e["event"] == kind]

    def seen(self) -> dict[str, str]:
        return {e["peer_id"]: e["address"] for e in self.of("hint")}

    def first_seen_at(self, peer_id: str) -> float | None:
        return next((t for t, e in list(self.events) if e["event"] == "hint" and e["peer_id"] == peer_id), None)

    def stop(self) -> dict:
        """SIGTERM (it withdraws its announcement), then its final counters."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.returncode == 0, self.proc.stderr.read()
        (stats,) = self.of("stats")
        return stats


def wait_until(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def test_three_hosts_find_each_other_and_ignore_other_meshes_and_the_blocked(netns_lab, capsys):
    lab = netns_lab(5)
    lab.block_multicast(lab[4])
    t0 = time.monotonic()
    mesh = [Announcer(lab[i], mesh=MESH, port=7000 + i) for i in range(3)]
    foreign = Announcer(lab[3], mesh=OTHER, port=7003)
    blocked = Announcer(lab[4], mesh=MESH, port=7004)
    everyone = [*mesh, foreign, blocked]
    try:
        def converged() -> bool:
            return all(set(a.seen()) >= {b.peer_id for b in mesh if b is not a} for a in mesh)

        wait_until(converged, timeout_s=10, what="the three peers to see each other")
        converged_at = time.monotonic() - t0
        started = [a.of("started")[0]["t"] for a in mesh]
        # after the first sighting, each peer has kept announcing; give the blocked and the
        # foreign one as long again to show up anywhere they should not
        time.sleep(max(2.0, converged_at))

        for a in mesh:
            others = {b.peer_id: b.address for b in mesh if b is not a}
            assert a.seen() == others, f"{a.ns.name} saw {a.seen()}"
        assert foreign.seen() == {}
        assert blocked.seen() == {}

        # a peer that stops cleanly is reported gone by the others at once
        first = mesh[0]
        stats = {first: first.stop()}
        stopped = time.monotonic()
        wait_until(lambda: all(first.peer_id in {e["peer_id"] for e in a.of("gone")} for a in mesh[1:]),
                   timeout_s=3, what="the others to report the stopped peer gone")
        gone_after = time.monotonic() - stopped

        # it comes back (same id, new port): a late joiner, listed by the others again
        back = Announcer(lab[0], mesh=MESH, port=7100, peer_id=first.peer_id)
        everyone.append(back)
        wait_until(lambda: all(a.seen().get(first.peer_id) == back.address for a in mesh[1:]),
                   timeout_s=5, what="the others to list the restarted peer at its new address")
        rejoin = time.monotonic() - back.launched
        wait_until(lambda: len(back.seen()) == 2, timeout_s=5, what="the restarted peer to see the others")

        # kill -9 leaves no goodbye; restarting the same id must not look like a conflict
        victim = mesh[2]
        victim.proc.kill()
        victim.proc.wait()
        again = Announcer(lab[2], mesh=MESH, port=victim.port, peer_id=victim.peer_id)
        everyone.append(again)
        wait_until(lambda: set(again.seen()) == {first.peer_id, mesh[1].peer_id}, timeout_s=5,
                   what="the peer restarted after kill -9 to see the others")

        for a in [mesh[1], foreign, blocked, back, again]:
            stats[a] = a.stop()
    finally:
        for a in everyone:
            if a.proc.poll() is None:
                a.proc.kill()

    for a in (first, mesh[1], back, again):
        assert stats[a]["dropped_other_mesh"] >= 1  # heard the foreign one, ignored it
    assert stats[foreign]["accepted"] == 0 and stats[foreign]["dropped_other_mesh"] >= 3
    heard = {k: v for k, v in stats[blocked].items() if k.startswith("dropped_") and k != "dropped_own"}
    assert stats[blocked]["accepted"] == 0 and heard == {}  # not even the foreign one
    sighting = max(a.first_seen_at(b.peer_id) - a.launched for a in mesh for b in mesh if b is not a)
    with capsys.disabled():
        print(f"\n[mdns] processes launched -> all three see each other: {converged_at:.2f} s "
              f"(each process: mDNS started {min(started):.2f}..{max(started):.2f} s after its own start; "
              f"slowest sighting {sighting:.2f} s after launch); clean stop -> gone: {gone_after:.2f} s; "
              f"restart -> listed by all: {rejoin:.2f} s")
    assert converged_at < 5.0 and rejoin < 3.0


def test_link_down_partitions_and_link_up_heals(netns_lab):
    lab = netns_lab(2)
    server = lab[1].popen(
        [sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, text=True,
    )
    assert server.stdout.readline().strip() == "ready"
    probe = [sys.executable, "-c",
             f"import socket\ns=socket.socket()\ns.settimeout(1)\nprint(s.connect_ex(('{lab[1].ip}',9009)))"]

    assert lab[0].run(probe).stdout.strip() == "0"
    lab.link_down(lab[1])
    assert lab[0].run(probe).stdout.strip() != "0"  # timed out: the cable is cut
    lab.link_up(lab[1])
    wait_until(lambda: lab[0].run(probe).stdout.strip() == "0", timeout_s=5, what="the link to heal")


def test_block_multicast_keeps_unicast(netns_lab):
    lab = netns_lab(2)
    lab.block_multicast(lab[1])
    server = lab[1].popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    probe = [sys.executable, "-c",
             f"import socket\ns=socket.socket()\ns.settimeout(2)\nprint(s.connect_ex(('{lab[1].ip}',9009)))"]
    assert lab[0].run(probe).stdout.strip() == "0"
    lab.unblock_multicast(lab[1])


def test_leftovers_of_a_crashed_run_are_removed():
    # a run that dies holding a lab (SIGKILL: no atexit, no finally)
    crashed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
        stdout=subprocess.PIPE, text=True,
    )
    tag = crashed.stdout.readline().strip()
    assert tag.startswith(netns.PREFIX)
    crashed.kill()
    crashed.wait()
    namespaces, links = netns.leftovers()
    assert any(n.startswith(tag) for n in namespaces) and any(n.startswith(tag) for n in links)

    removed = netns.clean_leftovers()  # what every new Lab() does first
    assert any(n.startswith(tag) for n in removed)
    namespaces, links = netns.leftovers(only_dead=False)
    assert not [n for n in namespaces + links if n.startswith(tag)]


def test_a_failing_test_still_tears_down():
    tags = []
    with pytest.raises(RuntimeError), netns.Lab(2) as lab:
        tags.append(lab.tag)
        lab[0].popen([sys.executable, "-c", "import time; time.sleep(60)"])
        raise RuntimeError("test failed")
    namespaces, links = netns.leftovers(only_dead=False)
    assert not [n for n in namespaces + links if n.startswith(tags[0])]
