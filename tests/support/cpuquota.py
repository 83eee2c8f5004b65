"""Slow a process tree down with a CPU quota (a cgroup), for tests that need one slow peer.

``CpuQuota(fraction)`` makes a cgroup whose processes together get ``fraction`` of one
CPU (``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us`` on v1, whichever this machine mounts
with the cpu controller), ``add(pid)`` moves a process and all its descendants into it
(threads move with their process; children spawned later inherit it), and ``close()``
moves whatever is left back to the parent and removes the cgroup. Needs root; raises
``QuotaUnavailable`` saying why when neither hierarchy can be used, so a test fails with
a reason instead of skipping.

Example::

    with CpuQuota(0.15) as quota:
        quota.add(peer.proc.pid)   # the peer and its engine process now share 15% of a CPU
        slow = subprocess.Popen([...], preexec_fn=quota.join)   # or under the quota from the start
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil

PERIOD_US = 100_000


class QuotaUnavailable(RuntimeError):
    pass


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], set(parts[3].split(","))))
    return out


def _v2_root() -> Path | None:
    for path, fstype, _ in _mounts():
        controllers = Path(path) / "cgroup.controllers"
        if fstype == "cgroup2" and controllers.exists() and "cpu" in controllers.read_text().split():
            return Path(path)
    return None


def _v1_root() -> Path | None:
    for path, fstype, options in _mounts():
        if fstype == "cgroup" and "cpu" in options and (Path(path) / "cpu.cfs_quota_us").exists():
            return Path(path)
    return None


class CpuQuota:
    def __init__(self, fraction: float) -> None:
        if not 0.01 <= fraction <= 64:
            raise ValueError("fraction must be in [0.01, 64] CPUs")
        self.fraction = fraction
        self.path: Path | None = None
        self.version = 0

    def __enter__(self) -> CpuQuota:
        if os.geteuid() != 0:
            raise QuotaUnavailable("a CPU quota needs root (cgroups)")
        quota_us = int(self.fraction * PERIOD_US)
        name = f"mesh-test-{uuid.uuid4().hex[:8]}"
        root = _v2_root()
        if root is not None:
            try:
                (root / "cgroup.subtree_control").write_text("+cpu")
            except OSError:
                pass  # already enabled, or enabled by whoever manages the tree
            self.path, self.version = root / name, 2
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
            return self
        root = _v1_root()
        if root is None:
            raise QuotaUnavailable("no cgroup hierarchy with the cpu controller is mounted "
                                   "(looked for cgroup2 with 'cpu' in cgroup.controllers and a v1 cpu mount)")
        self.path, self.version = root / name, 1
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        return self

    def add(self, pid: int) -> list[int]:
        """Move ``pid`` and its descendants into the quota; returns the pids moved."""
        assert self.path is not None, "use CpuQuota as a context manager"
        proc = psutil.Process(pid)
        pids = [proc.pid, *(c.pid for c in proc.children(recursive=True))]
        for p in pids:
            (self.path / "cgroup.procs").write_text(str(p))
        return pids

    def join(self) -> None:
        """Put the calling process in the quota: a ``preexec_fn``, so a process started
        with it runs (and starts its children) under the quota from its first instruction."""
        assert self.path is not None
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def members(self) -> list[int]:
        assert self.path is not None
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.path is None or not self.path.exists():
            return
        parent = self.path.parent / "cgroup.procs"
        for pid in self.members():
            try:
                parent.write_text(str(pid))
            except OSError:
                pass  # it exited meanwhile
        self.path.rmdir()
        self.path = None
