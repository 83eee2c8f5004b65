"""Real hosts: one `mesh-peer` process per network namespace on a bridge, real mDNS,
real faults (kill -9, a cable pulled, multicast filtered). Every namespace is removed
afterwards, pass or fail (tests/netns.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netns

pytestmark = [pytest.mark.subprocess, pytest.mark.netns]

BIN = Path(sys.executable).parent
PORT = "7411"


@pytest.fixture
def lab_factory():
    reason = netns.available()
    assert reason is None, reason  # CI runs as root: fail loudly rather than skip
    yield from netns.netns_lab_fixture()


class Host:
    """A namespace running one mesh-peer, and the `mesh` CLI run inside it."""

    def __init__(self, ns: netns.Namespace, root: Path, name: str) -> None:
        self.ns, self.name = ns, name
        self.data = root / name
        self.data.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = root / f"{name}.log"

    def start(self, *extra: str) -> None:
        self._logf = open(self.log, "ab")
        self.proc = self.ns.popen(
            [str(BIN / "mesh-peer"), "--data-dir", str(self.data), "--rpc-port", PORT, "--name", self.name,
             "--ctx", "512", "--threads", "1", *extra],
            stdout=self._logf, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()}")
            if "mesh-peer ready" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()}")

    def mesh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.ns.run([str(BIN / "mesh"), *args, "--data-dir", str(self.data)], check=False, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"mesh {args} in {self.name}: {r.stderr}\n{self.log.read_text()}")
        return r

    def peers(self) -> dict[str, dict]:
        r = self.mesh("peers", "--json", check=False)
        if r.returncode != 0:
            return {}
        return {m["name"]: m for m in json.loads(r.stdout)}

    def states(self) -> dict[str, str]:
        return {n: m["state"] for n, m in self.peers().items()}

    def invite(self) -> str:
        return self.mesh("invite").stdout.strip()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_until(cond, what: str, timeout_s: float = 45.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for: {what}")


def build_mesh(lab, tmp_path, n: int, *, blocked: set[int] = frozenset()) -> list[Host]:
    """Host 0 creates the mesh; the others enrol with tokens from it (no --join)."""
    hosts = [Host(lab[i], tmp_path, f"h{i}") for i in range(n)]
    for i in blocked:
        lab.block_multicast(lab[i])
    hosts[0].start()
    for h in hosts[1:]:
        extra = ["--join", f"{lab[0].ip}:{PORT}"] if h.ns.index - 1 in blocked else []
        h.start("--join-token", hosts[0].invite(), *extra)
    return hosts


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
    finally:
        for h in hosts:
            h.stop()


def test_other_mesh_on_the_same_lan_is_ignored(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = build_mesh(lab, tmp_path, 2)
    stranger = Host(lab[2], tmp_path, "other")  # creates its own mesh, on the same LAN
    stranger.start("--join", f"{lab[0].ip}:{PORT}")
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
