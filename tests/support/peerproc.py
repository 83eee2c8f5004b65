"""Start and stop real `mesh-peer` processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent

# A prompt the default model answers at length every time: at temperature 0 SmolLM2 falls
# into repeating the word and runs to max_tokens (about 45 tokens/s here), so a request
# with it is still generating when a test cancels, signals or kills something. "Count
# from 1 to 1000" is not one: greedily it stops after 20, and at 0.7 it sometimes stops
# within a second (CI: a job that was never seen running, so its test timed out).
LONG_PROMPT = "Repeat the word hello 2000 times."


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mesh_cmd(*args: str) -> list[str]:
    return [str(BIN / "mesh"), *args]


class PeerProcess:
    def __init__(self, data_dir: Path, *extra: str, preexec_fn=None) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-peer.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        # Outside a test namespace a peer stays on loopback and off mDNS: tests send no
        # traffic beyond this machine.
        defaults = [] if "--rpc-host" in extra else ["--rpc-host", "127.0.0.1"]
        defaults += [] if "--mdns" in extra else ["--no-mdns"]
        defaults += [] if ("--http-port" in extra or "--no-http" in extra) else ["--http-port", "0"]
        extra = tuple(e for e in extra if e != "--mdns")
        self.proc = subprocess.Popen(
            [str(BIN / "mesh-peer"), "--data-dir", str(self.data_dir), "--rpc-port", "0", *defaults, *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # run in the child before mesh-peer starts (e.g. CpuQuota.join)
        )
        self.info: dict = {}

    def wait_ready(self, timeout_s: float = 120) -> dict:
        deadline = time.monotonic() + timeout_s
        peer_file = self.data_dir / "peer.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mesh-peer exited with {self.proc.returncode}:\n{self.log()}")
            if peer_file.exists():
                try:
                    self.info = json.loads(peer_file.read_text())
                    if self.info.get("pid") == self.proc.pid:
                        return self.info
                except ValueError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"mesh-peer not ready in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def run_mesh(*args: str, data_dir: Path | None = None, input: str | None = None, timeout: float = 120,
             env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = mesh_cmd(*args)
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def wait_until(cond, timeout_s: float = 60.0, *, every_s: float = 0.2) -> None:
    """Poll ``cond`` (blocking, for tests driving processes) until true or fail the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError("condition not reached in time")
