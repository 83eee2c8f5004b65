"""What a peer tells the mesh about itself: hardware, models and load.

Read from psutil and the backend at the edge; the result is a ``PeerMeta``
(``mesh.gossip.view``) that gossip carries as msgpack (signed by this peer) and routing
reads back. Kept small: it travels on
every refresh (about once a second for load).

    hardware  cpu_count, ram_total_mb, ram_available_mb, gpu (name or ""), on_battery (bool or None)
    models    [{name, parameters, quantisation, context_length, tokens_per_s, features}]  (empty while
              the engine is not ready: a peer whose engine is restarting or failed offers no model;
              features: the request options its engine honours, e.g. stop, logprobs, grammar)
    load      {running, waiting, parallel, queue_limit}
    engine    {state, reason, restarts}  (state: ready, starting, restarting, failed)
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from mesh.gossip.view import MAX_MODELS_PER_PEER, MAX_REASON_CHARS, EngineInfo, Hardware, LoadInfo, ModelInfo, PeerMeta
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


def hardware() -> Hardware:
    vm = psutil.virtual_memory()
    battery = None
    try:
        sensors = psutil.sensors_battery()
    except (AttributeError, OSError, RuntimeError):  # no battery API on this platform
        sensors = None
    if sensors is not None:
        battery = not sensors.power_plugged
    return Hardware(
        cpu_count=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total_mb=vm.total // (1 << 20),
        ram_available_mb=vm.available // (1 << 20),
        gpu=detect_gpu(),
        on_battery=battery,
    )


def models(backend: Backend) -> tuple[ModelInfo, ...]:
    several = getattr(backend, "models_info", None)  # mesh.inference.model_set.ModelSet
    if several is not None:
        return tuple(several()[:MAX_MODELS_PER_PEER])
    if not backend.status().serving:
        return ()
    caps = backend.capabilities
    return (ModelInfo(name=caps.model, parameters=caps.parameters, quantisation=caps.quantisation,
                      context_length=caps.context_length, tokens_per_s=round(caps.tokens_per_s, 1),
                      features=caps.features),)


def load(backend: Backend) -> LoadInfo:
    caps = backend.capabilities
    now = backend.load()
    return LoadInfo(running=now.running, waiting=now.waiting, parallel=caps.parallel, queue_limit=caps.queue_limit)


def engine(backend: Backend) -> EngineInfo:
    status = backend.status()
    return EngineInfo(state=status.state, reason=status.reason[:MAX_REASON_CHARS], restarts=status.restarts)


def snapshot(backend: Backend, *, renew: bool = False) -> PeerMeta:
    """The whole ``meta`` a peer gossips about itself (``renew``: it holds the authority key)."""
    return PeerMeta(hw=hardware(), models=models(backend), load=load(backend), engine=engine(backend), renew=renew)
