"""Mesh peers on simulated hosts (network namespaces, tests/netns.py), for tests and bench/."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import netns

BIN = Path(sys.executable).parent
PORT = "7411"


class Host:
    """A namespace running one mesh-peer, and the `mesh` CLI run inside it."""

    def __init__(self, ns: netns.Namespace, root: Path, name: str) -> None:
        self.ns, self.name = ns, name
        self.data = root / name
        self.data.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = root / f"{name}.log"

    def start(self, *extra: str) -> None:
        self.launched_at = time.time()
        offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the log
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
            if "mesh-peer ready" in self.log.read_text(errors="replace")[offset:]:
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
