"""Lend this machine's memory and CPU to another process's model: a ggml RPC server.

llama.cpp's RPC backend (``GGML_RPC``, shipped as ``libggml-rpc.so`` beside
``libllama``) lets a model keep some of its layers on another device: that device runs
``ggml_backend_rpc_start_server``, which holds the layers' tensors and computes their
part of each graph; the process that loads the model connects to it
(``mesh.inference.split_load``). This module starts and stops such a server in a
process of its own (the call blocks forever, and a crash in it must not take anything
else down). Groundwork for issue 16 (one model across several peers); nothing in the
mesh starts a lender yet.

Loopback only. The ggml RPC protocol has no authentication and no encryption, and it
lets its client allocate memory and run graphs on the server: anyone who can reach the
port can use it. ``start_lender`` refuses any host but ``127.0.0.1``; reaching a lender
on another device is for the mesh's own (signed, encrypted) tunnel, which does not exist
yet.

Memory. ``ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices,
devices)`` takes no memory amount: the server reports its device's free memory (for the
CPU device, the host's free RAM) and allocates whatever buffers its client asks for. So
``offer_bytes`` is not enforced by the server: it is what the lender says it offers,
and the borrower's planner (``mesh.inference.split_plan``) puts no more layers on it
than fit in that amount. A hard cap would have to come from the OS (a cgroup, or
``RLIMIT_DATA`` in the child); not done.

Readiness: the child prints ``READY`` once it has found the library, its symbols and
the CPU device, just before it binds; the parent polls the port until it accepts a
connection (``LenderError``, with the child's output, if the child exits or the deadline
passes first). The child's output goes to a log file (``Lender.log_path``), never to a
pipe nobody reads (the server logs every connection; a full pipe would stall it). The
child dies with its parent (``PR_SET_PDEATHSIG``).

    python -m mesh.inference.rpc_lender --port 50052 --cache-dir /tmp/ggml-cache
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ModelError

LOOPBACK = "127.0.0.1"
READY_LINE = "READY"
RPC_LIBRARY = "libggml-rpc.so"
GGML_BACKEND_DEVICE_TYPE_CPU = 0


class LenderError(ModelError):
    """A lender could not be started, or is not usable."""


@dataclass
class Lender:
    """A running ggml RPC server process (see ``start_lender``)."""

    host: str
    port: int
    cache_dir: Path | None
    offer_bytes: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """What the server printed so far (its last 4000 characters)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        try:
            self.log_path.unlink()
        except OSError:
            pass

    def __enter__(self) -> Lender:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def check_host(host: str) -> str:
    """``host`` if it is loopback IPv4 (``127.0.0.1``), else ``LenderError``."""
    if host != LOOPBACK:
        raise LenderError(
            f"a ggml RPC lender binds to {LOOPBACK} only, not {host!r}: the ggml RPC protocol has no "
            "authentication or encryption, and anyone who reaches the port can use this machine's memory "
            "and CPU; peers on other devices will reach it through the mesh's own tunnel (not built yet)"
        )
    return host


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (another process may take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rpc_library_path() -> Path:
    """``libggml-rpc.so`` of the installed llama-cpp-python, or ``LenderError``."""
    from mesh.inference.cpu_variant import lib_dir

    path = lib_dir() / RPC_LIBRARY
    if not path.exists():
        raise LenderError(
            f"{path} is missing: this llama-cpp-python was built without -DGGML_RPC=ON; rebuild it with bin/setup"
        )
    return path


def load_rpc_library() -> ctypes.CDLL:
    """``libggml-rpc.so`` with the symbols mesh uses typed; ``LenderError`` when one is missing.

    Loaded after ``ensure_cpu_variant`` (which imports ``llama_cpp``, so the library
    links to the very ``libggml-base`` that ``libllama`` uses)."""
    path = rpc_library_path()
    try:
        lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
    except OSError as e:
        raise LenderError(f"cannot load {path}: {e}") from e
    symbols = {
        "ggml_backend_rpc_start_server": (
            None,
            [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)],
        ),
        "ggml_backend_rpc_add_server": (ctypes.c_void_p, [ctypes.c_char_p]),
        "ggml_backend_rpc_get_device_memory": (
            None,
            [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        ),
    }
    for name, (restype, argtypes) in symbols.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LenderError(
                f"{path} has no {name}: this ggml RPC library is of another version than mesh expects "
                "(llama-cpp-python 0.3.36, RPC protocol 7)"
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def ggml_library() -> ctypes.CDLL:
    """The ``libggml`` copy ``libllama`` uses (see ``cpu_variant._ggml_lib``), device functions typed."""
    from mesh.inference.cpu_variant import _ggml_lib, lib_dir

    ggml = ctypes.CDLL(str(_ggml_lib(lib_dir())), mode=os.RTLD_GLOBAL)
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    ggml.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    return ggml


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is ``127.0.0.1:PORT``, else ``LenderError`` (see rpc_lender)."""
    host, _, port = endpoint.rpartition(":")
    if host != LOOPBACK or not port.isdigit() or not 0 < int(port) < 65536:
        raise LenderError(
            f"ggml RPC endpoint {endpoint!r}: only {LOOPBACK}:PORT is allowed (the protocol is unauthenticated "
            "and unencrypted; other devices will be reached through the mesh's tunnel, not built yet)"
        )
    return endpoint


def rpc_devices(endpoints: Sequence[str]) -> ctypes.Array:
    """The ggml devices of the RPC servers at ``endpoints`` (each ``127.0.0.1:PORT``), as
    the NULL-terminated array ``llama_model_params.devices`` takes; ``LenderError`` when
    one does not answer. Keep the array alive as long as the model."""
    rpc = load_rpc_library()
    ggml = ggml_library()
    devs = []
    for ep in endpoints:
        reg = rpc.ggml_backend_rpc_add_server(check_endpoint(ep).encode())
        if not reg or ggml.ggml_backend_reg_dev_count(reg) < 1:
            raise LenderError(f"no ggml RPC server answers on {ep}")
        devs.append(ggml.ggml_backend_reg_dev_get(reg, 0))
    return (ctypes.c_void_p * (len(devs) + 1))(*devs, None)


def start_lender(
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    cache_dir: Path | None = None,
    offer_bytes: int = 0,
    threads: int | None = None,
    ready_timeout: float = 30.0,
) -> Lender:
    """Start a ggml RPC server process on ``host:port`` (a free port when ``None``) and
    return once it accepts connections. ``cache_dir``: where the server keeps tensors
    its clients sent, by hash, so a reload sends only hashes (``None``: no cache)."""
    check_host(host)
    rpc_library_path()  # fail here, with the reason, rather than in the child
    port = port if port is not None else free_port(host)
    cmd = [sys.executable, "-m", "mesh.inference.rpc_lender", "--host", host, "--port", str(port)]
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--cache-dir", str(cache_dir)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    fd, log_name = tempfile.mkstemp(prefix=f"mesh-rpc-lender-{port}-", suffix=".log")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT)
    finally:
        os.close(fd)
    lender = Lender(host, port, cache_dir, offer_bytes, proc, Path(log_name))
    try:
        _wait_ready(lender, ready_timeout)
    except BaseException:
        lender.stop()
        raise
    return lender


def _wait_ready(lender: Lender, timeout: float) -> None:
    proc = lender.process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LenderError(
                f"the ggml RPC lender exited ({proc.returncode}) before listening on {lender.endpoint}: "
                f"{lender.log().strip()[-2000:]}"
            )
        if READY_LINE in lender.log():
            try:
                with socket.create_connection((lender.host, lender.port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise LenderError(
        f"the ggml RPC lender did not listen on {lender.endpoint} within {timeout:.0f} s: {lender.log().strip()[-2000:]}"
    )


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(host: str, port: int, cache_dir: str | None, threads: int) -> None:
    """The child: register the CPU variant, find the CPU device, print READY and serve (blocks)."""
    check_host(host)
    _die_with_parent()
    from mesh.inference.cpu_variant import ensure_cpu_variant

    ensure_cpu_variant()
    import llama_cpp

    llama_cpp.llama_backend_init()
    rpc = load_rpc_library()
    ggml = ggml_library()
    cpu = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise LenderError("ggml has no CPU device registered")
    devices = (ctypes.c_void_p * 1)(cpu)
    print(READY_LINE, flush=True)
    rpc.ggml_backend_rpc_start_server(
        f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices
    )


def main(argv: list[str] | None = None) -> int:
    from mesh.inference.cpu_variant import default_threads

    ap = argparse.ArgumentParser(prog="python -m mesh.inference.rpc_lender", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=LOOPBACK, help="only 127.0.0.1 is accepted")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        serve(args.host, args.port, args.cache_dir, args.threads or default_threads())
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
