import asyncio

import msgpack
import psutil

from mesh.inference import capabilities
from mesh.inference.backend import GenerationRequest
from mesh.testing import ScriptedBackend


def test_snapshot_is_small_msgpack_native_and_real():
    meta = capabilities.snapshot(ScriptedBackend(model="m1", tokens_per_s=42.0)).to_wire()
    packed = msgpack.packb(meta)
    assert msgpack.unpackb(packed) == meta and len(packed) < 512
    assert meta["hw"]["cpu_count"] == psutil.cpu_count()
    assert 0 < meta["hw"]["ram_available_mb"] <= meta["hw"]["ram_total_mb"]
    assert meta["models"][0]["name"] == "m1" and meta["models"][0]["tokens_per_s"] == 42.0
    assert meta["load"] == {"running": 0, "waiting": 0, "parallel": 1, "queue_limit": 8}


def test_load_follows_the_backend():
    async def main():
        backend = ScriptedBackend(["x"] * 100, delay_s=0.01)
        stream = backend.stream(GenerationRequest.from_prompt("hi", max_tokens=100))
        await stream.__anext__()
        busy = capabilities.load(backend)
        await stream.aclose()
        return busy, capabilities.load(backend)

    busy, idle = asyncio.run(main())
    assert busy.running == 1 and idle.running == 0
