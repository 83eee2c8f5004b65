"""A real OpenAI-compatible server on loopback for tests: ``python -m llama_cpp.server``.

``LlamaServer`` starts llama-cpp-python's own server (the ``[server]`` extra) on
127.0.0.1 with the default model, on a port the kernel picks (``--port 0``; the port is
read from uvicorn's "Uvicorn running on" line, so no other process can take it in
between), waits until ``GET /v1/models`` answers, and always terminates it. Nothing
leaves the machine and nothing is downloaded.

Settings chosen for tests: a small context (``n_ctx``), a fixed model alias so requests
name the model as a real client would, and ``--interrupt_requests False`` (by default the
server abandons a running stream when another request arrives; the backend under test
does its own queueing and should see the server behave as vLLM or OpenAI do).

Example::

    with LlamaServer(n_ctx=512) as server:
        backend = OpenAIBackend(server.base_url, server.model, context_length=server.n_ctx)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mesh.inference.models import default_model_path

MODEL_ALIAS = "SmolLM2-135M-Instruct"
_RUNNING_ON = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class LlamaServer:
    def __init__(
        self, *, n_ctx: int = 512, n_threads: int = 2, model_path: str | os.PathLike | None = None, port: int = 0
    ) -> None:
        self.n_ctx = n_ctx
        self.model = MODEL_ALIAS
        self._args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_path or default_model_path()),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads),
            "--interrupt_requests", "False",
        ]  # fmt: skip
        self._log_file = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.log_path = Path(self._log_file.name)
        self.proc: subprocess.Popen | None = None
        self.port = port  # 0: the kernel picks one, read from the server's log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        # llama.cpp looks for its CPU variant libraries beside the Python executable; point
        # it at the one mesh's own engine uses (mesh.inference.cpu_variant.backend_env)
        from mesh.inference.cpu_variant import backend_env, ensure_cpu_variant

        env = {**os.environ, **backend_env(ensure_cpu_variant())}
        self.proc = subprocess.Popen(self._args, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if not self.port:
                m = _RUNNING_ON.search(self.log_path.read_bytes())
                self.port = int(m.group(1)) if m else 0
            if self.port:
                try:
                    with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"llama_cpp.server not ready in {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log_file.closed:
            self._log_file.close()
            self.log_path.unlink(missing_ok=True)
