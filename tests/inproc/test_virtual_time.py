"""Whole peers in virtual time: every timer of a peer (gossip periods, probe timeouts,
suspicion, meta refresh, job polling, back-offs) runs on the clock it is given, so a
test drives minutes of the real LAN protocol with ``ManualClock`` instead of waiting."""

from __future__ import annotations

import asyncio
import random
import time

from mesh.config import PeerConfig
from mesh.gossip.config import GossipConfig
from mesh.gossip.timing import suspicion_min_s
from mesh.identity.joining import make_invite
from mesh.paths import DataDir
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from mesh.testing.clock import ManualClock
from support.loopmesh import run

LAN = GossipConfig.lan()  # production timings: 0.7 s periods, seconds of suspicion


def _config(tmp_path, name: str, **kw) -> PeerConfig:
    return PeerConfig(data_dir=tmp_path / name, rpc_host="127.0.0.1", rpc_port=0, name=name, mdns=False,
                      gossip=LAN, **kw)


async def _mesh(tmp_path, clock: ManualClock, n: int, seed: int) -> list[Peer]:
    first = Peer(_config(tmp_path, "p0"), backend=ScriptedBackend(model="m0"), clock=clock,
                 rng=random.Random(seed))
    await first.start()
    peers = [first]
    for i in range(1, n):
        token = make_invite(DataDir(tmp_path / "p0"), first.identity.public_raw, [first.endpoint], ttl_s=600,
                            now=clock(), inviter_curve=first.transport.public).to_text()
        p = Peer(_config(tmp_path, f"p{i}", join_token=token, seeds=(first.endpoint,)),
                 backend=ScriptedBackend(model=f"m{i}"), clock=clock, rng=random.Random(seed + i))
        await p.start()
        peers.append(p)
    return peers


def _states(p: Peer) -> dict[str, str]:
    return {m.name: m.state for m in p.membership_service.view()}


async def _run_until(clock: ManualClock, cond, limit_s: float) -> float:
    """Advance virtual time until ``cond()``; how much virtual time that took."""
    start = clock()
    while not cond():
        assert clock() - start < limit_s, f"not reached within {limit_s} virtual seconds"
        await clock.run(0.1, step_s=0.02)
    return clock() - start


def test_a_silent_member_is_declared_dead_on_the_injected_clock_only(tmp_path):
    clock = ManualClock(start=time.time())

    async def main():
        peers = await _mesh(tmp_path, clock, 3, seed=7)
        try:
            everyone = {"p0": "alive", "p1": "alive", "p2": "alive"}
            await _run_until(clock, lambda: all(_states(p) == everyone for p in peers), 60)
            # p2 goes silent without a word (as if its device lost power): its gossip stops,
            # nothing it receives is answered
            await peers[2].membership_service.stop(announce_leave=False)
            # real time passes, virtual time does not: no timer of the others fires, so
            # nobody suspects it, however long that is
            await asyncio.sleep(1.5)
            assert all(_states(p)["p2"] == "alive" for p in peers[:2])
            # virtual time passes: the LAN protocol's probe, suspicion and dead timers run
            took = await _run_until(clock, lambda: all(_states(p)["p2"] == "dead" for p in peers[:2]), 120)
            # no faster than the protocol allows: at least the suspicion timeout. (The probe
            # that fails may have left before p2 went silent: acks travel in real time while
            # virtual time steps on, so how much of its period remained is not fixed.)
            assert took >= suspicion_min_s(LAN.suspicion_mult, 3, LAN.probe_interval_s) - 0.05
            assert all(_states(p)["p0"] == "alive" and _states(p)["p1"] == "alive" for p in peers[:2])
        finally:
            for p in peers:
                await p.stop()

    run(main(), 120)
