"""The router sends a slow peer fewer prompts than a fast one, with the real model.

Three real mesh-peer processes on loopback: an entry peer with no model (so every prompt
is routed to another peer) and two workers on the default model with one thread each;
one worker and its engine process are held to a small CPU quota (a cgroup), so it
really generates several times slower. After a few answers from each (their speed is
measured from answers and gossiped):

- one prompt at a time, both workers idle each time: the router sends (nearly) every
  prompt to the fast worker. The slow worker is given the lower peer id, the router's
  tie-break, so a router blind to speed would send them all to the slow one;
- four at a time: the fast worker still gets at least twice as many.

Round robin would send each worker the same number in both.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from mesh.client import Client
from mesh.identity.keys import Identity
from mesh.paths import DataDir
from support.cpuquota import CpuQuota
from support.peerproc import PeerProcess, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

SLOW_CPU = 0.12  # of one CPU, for the slow worker and its engine together
SEQUENTIAL = 6
PROMPTS = 16
IN_FLIGHT = 4
MAX_TOKENS = 24


def models_seen_by(entry: PeerProcess) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=entry.data_dir)
    assert r.returncode == 0, r.stderr
    out = {}
    for m in json.loads(r.stdout):
        models = (m.get("meta") or {}).get("models") or []
        if m["state"] == "alive" and models:
            out[m["name"]] = models[0]
    return out


def test_a_peer_held_to_a_small_cpu_quota_gets_fewer_prompts(tmp_path):
    entry = PeerProcess(tmp_path / "entry", "--name", "entry", "--no-model", "--no-http")
    workers: dict[str, PeerProcess] = {}
    # identities made up front, so the slow worker can be the one with the lower peer id
    made = sorted(Identity.load_or_create(DataDir(tmp_path / d).identity_key)[0].peer_id_text + " " + d
                  for d in ("w1", "w2"))
    dirs = {"slow": made[0].split()[1], "fast": made[1].split()[1]}
    with CpuQuota(SLOW_CPU) as quota:
        try:
            join = entry.wait_ready()["endpoint"].removeprefix("tcp://")
            for name in ("fast", "slow"):
                token = run_mesh("invite", data_dir=entry.data_dir).stdout.strip()
                # the slow worker runs under the quota from its start: its engine's first
                # measured speed (at warm-up) is already its slow one
                workers[name] = PeerProcess(tmp_path / dirs[name], "--name", name, "--join-token", token, "--join", join,
                                            "--threads", "1", "--no-http", "--ctx", "512",
                                            preexec_fn=quota.join if name == "slow" else None)
            for w in workers.values():
                w.wait_ready(180)
            assert len(quota.members()) >= 2, "the slow worker's engine process is not under the quota"
            wait_until(lambda: set(models_seen_by(entry)) == {"fast", "slow"}, 60)
            ids = {name: w.info["peer_id"] for name, w in workers.items()}

            async def ask_all() -> Counter:
                # a few answers from each, pinned, so each one's speed is measured under the quota
                async with Client(entry.data_dir, timeout_s=120) as c:
                    for name in ("fast", "slow", "fast", "slow", "fast", "slow"):
                        await c.aask("Name a colour.", max_tokens=MAX_TOKENS, peer=ids[name], no_escalate=True,
                                     temperature=0.0)
                seen: dict = {}

                def slow_is_seen_slow() -> bool:
                    seen.update(models_seen_by(entry))
                    slow_tps = seen.get("slow", {}).get("tokens_per_s", 0)
                    return 0 < slow_tps and slow_tps * 2 < seen.get("fast", {}).get("tokens_per_s", 0)

                try:
                    await asyncio.to_thread(wait_until, slow_is_seen_slow, 30)
                except AssertionError:
                    raise AssertionError(f"the entry peer does not see the slow worker as slow: {seen}") from None

                sequential: Counter = Counter()
                async with Client(entry.data_dir, timeout_s=120) as c:
                    for i in range(SEQUENTIAL):
                        answer = await c.aask(f"Name a fruit, number {i}.", max_tokens=MAX_TOKENS, no_escalate=True)
                        sequential[answer.peer] += 1

                queue = [f"Write a sentence about the number {i}." for i in range(PROMPTS)]
                by: Counter = Counter()

                async def lane() -> None:
                    async with Client(entry.data_dir, timeout_s=300) as c:
                        while queue:
                            answer = await c.aask(queue.pop(), max_tokens=MAX_TOKENS, no_escalate=True)
                            by[answer.peer] += 1

                await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
                return sequential, by

            sequential, by = asyncio.run(ask_all())
            fast, slow = by[ids["fast"]], by[ids["slow"]]
            assert fast + slow == PROMPTS, by  # the entry peer answered none itself
            seen = models_seen_by(entry)
            speeds = {n: round(seen[n]["tokens_per_s"], 1) for n in seen}
            assert ids["slow"] < ids["fast"]  # the tie-break favours the slow one
            assert sequential[ids["fast"]] >= SEQUENTIAL - 1, f"one at a time: {sequential}; speeds {speeds}"
            # round robin would give 8 and 8
            assert fast >= 2 * slow, f"fast {fast}, slow {slow}; gossiped speeds {speeds}"
        finally:
            for w in workers.values():
                w.stop()
            entry.stop()
