"""Real peers in one process on loopback (scripted backends), for multi-peer tests."""

from __future__ import annotations

import asyncio
import time

from mesh.config import PeerConfig
from mesh.gossip.config import GossipConfig
from mesh.identity.joining import make_invite
from mesh.paths import DataDir
from mesh.peer import Peer


def run(coro, timeout_s: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def config(tmp_path, name, **kw) -> PeerConfig:
    return PeerConfig(data_dir=tmp_path / name, rpc_host="127.0.0.1", rpc_port=0, name=name, mdns=False,
                      gossip=GossipConfig.for_tests(), **kw)


async def wait_for(cond, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def start_mesh(tmp_path, backends: list, *, cloud=None) -> list[Peer]:
    """Peer p0 creates the mesh; p1.. enrol with tokens from it and join through it."""
    first = Peer(config(tmp_path, "p0"), backend=backends[0], cloud=cloud)
    await first.start()
    peers = [first]
    for i, backend in enumerate(backends[1:], 1):
        token = make_invite(DataDir(tmp_path / "p0"), first.identity.public_raw, [first.endpoint], ttl_s=600,
                            now=time.time(), inviter_curve=first.transport.public).to_text()
        p = Peer(config(tmp_path, f"p{i}", join_token=token, seeds=(first.endpoint,)), backend=backend)
        await p.start()
        peers.append(p)
    return peers
