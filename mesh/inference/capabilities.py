"""What a peer tells the mesh about itself: hardware, models and load.

Read from psutil and the backend at the edge; the result is plain msgpack-native data
that gossip carries (signed by this peer) and routing reads. Kept small: it travels on
every refresh (about once a second for load).

    hardware  cpu_count, ram_total_mb, ram_available_mb, gpu (name or ""), on_battery (bool or None)
    models    [{name, parameters, quantisation, context_length, tokens_per_s}]  (empty while the engine
              is not ready: a peer whose engine is restarting or failed offers no model)
    load      {running, waiting, parallel, queue_limit}
    engine    {state, reason, restarts}  (state: ready, starting, restarting, failed)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil

from mesh.inference.backend import Backend

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def detect_gpu() -> str:
    """The first GPU's model name where the driver exposes it ("" when none is found)."""
    try:
        for info in sorted(_NVIDIA_GPUS.glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()[:64]
    except OSError:
        pass
    return ""


def hardware() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    battery = None
    try:
        sensors = psutil.sensors_battery()
    except (AttributeError, OSError, RuntimeError):  # no battery API on this platform
        sensors = None
    if sensors is not None:
        battery = not sensors.power_plugged
    return {
        "cpu_count": psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        "ram_total_mb": vm.total // (1 << 20),
        "ram_available_mb": vm.available // (1 << 20),
        "gpu": detect_gpu(),
        "on_battery": battery,
    }


def models(backend: Backend) -> list[dict[str, Any]]:
    if not backend.status().serving:
        return []
    caps = backend.capabilities
    return [
        {
            "name": caps.model,
            "parameters": caps.parameters,
            "quantisation": caps.quantisation,
            "context_length": caps.context_length,
            "tokens_per_s": round(caps.tokens_per_s, 1),
        }
    ]


def load(backend: Backend) -> dict[str, Any]:
    caps = backend.capabilities
    now = backend.load()
    return {"running": now.running, "waiting": now.waiting, "parallel": caps.parallel, "queue_limit": caps.queue_limit}


def snapshot(backend: Backend) -> dict[str, Any]:
    """The whole ``meta`` a peer gossips about itself."""
    return {"hw": hardware(), "models": models(backend), "load": load(backend), "engine": backend.status().to_wire()}
