"""The engine inside real mesh-peer processes: kill -9 of a serving engine costs the
answer nothing (it completes on another peer) and costs the peer nothing (it stays up,
says "engine restarting", and answers again); a peer whose engine cannot start runs and
gossips without a model, and says why.

Three peers on loopback: an entry peer whose model file is broken (so it serves no
model, and every ask really routes), and two peers with the default model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest

from mesh.client import Client
from mesh.inference.models import default_model_path
from support.peerproc import PeerProcess, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

PROMPT = "Write a long story about a dragon who learns to fly."


def info(p: PeerProcess) -> dict:
    with Client(p.data_dir, timeout_s=10) as c:
        return c.info()


def members(p: PeerProcess) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=p.data_dir)
    assert r.returncode == 0, r.stderr
    return {m["name"]: m for m in json.loads(r.stdout)}


def broken_model(tmp_path):
    data = default_model_path().read_bytes()
    key = b"general.architecture"
    at = data.index(key) + len(key) + 12
    path = tmp_path / "Broken-135M.Q4_1.gguf"
    path.write_bytes(data[:at] + b"zzzzz" + data[at + 5:])
    return path


def test_kill_9_of_a_serving_engine_mid_answer(tmp_path):
    entry = PeerProcess(tmp_path / "entry", "--name", "entry", "--model", str(broken_model(tmp_path)))
    others: list[PeerProcess] = []
    try:
        ep = entry.wait_ready()
        join = ep["endpoint"].removeprefix("tcp://")
        for name in ("p1", "p2"):
            token = run_mesh("invite", data_dir=entry.data_dir).stdout.strip()
            others.append(PeerProcess(tmp_path / name, "--name", name, "--join-token", token, "--join", join))
        for p in others:
            p.wait_ready()

        # the entry peer runs without a model, says why, and still gossips
        e = info(entry)["engine"]
        assert e["state"] == "failed" and "cannot load the model" in e["reason"], e
        status = run_mesh("status", data_dir=entry.data_dir)
        assert status.returncode == 0 and "failed: the engine cannot load the model" in status.stdout
        wait_until(lambda: all(members(p).get("entry", {}).get("state") == "alive" for p in others))
        wait_until(lambda: all(members(entry).get(n, {}).get("meta", {}).get("models") for n in ("p1", "p2")))
        assert members(others[0])["entry"]["meta"]["models"] == []

        # watch both serving peers' engine states while the answer runs
        seen: dict[str, set[str]] = {"p1": set(), "p2": set()}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for p, name in zip(others, ("p1", "p2")):
                    try:
                        seen[name].add(info(p)["engine"]["state"])
                    except Exception:  # noqa: BLE001  (a watcher: a failed look is simply not counted)
                        pass
                time.sleep(0.05)

        async def ask_and_kill():
            client = Client(entry.data_dir, timeout_s=120)
            try:
                stream = client.astream(PROMPT, max_tokens=300, temperature=0.0)
                it = stream.__aiter__()
                await it.__anext__()  # the answer has started streaming, on p1 or p2
                infos = [await asyncio.to_thread(info, p) for p in others]
                serving = [(p, i) for p, i in zip(others, infos) if i["engine"]["load"]["running"] == 1]
                assert len(serving) == 1, "exactly one peer generates"
                watcher.start()
                os.kill(serving[0][1]["engine"]["pid"], signal.SIGKILL)
                async for _ in it:
                    pass
                return stream.answer, serving[0]
            finally:
                await client.aclose()

        watcher = threading.Thread(target=watch, daemon=True)
        answer, (victim, victim_info) = asyncio.run(ask_and_kill())
        survivor = next(p for p in others if p is not victim)
        victim_name = "p1" if victim is others[0] else "p2"
        assert answer is not None and answer.completion_tokens > 0
        assert answer.peer == info(survivor)["peer"], "the answer completed on the other peer"

        # the victim's process lives on, said "restarting", and its engine comes back
        assert victim.proc.poll() is None
        wait_until(lambda: info(victim)["engine"]["state"] == "ready", 60)
        stop.set()
        watcher.join()
        assert "restarting" in seen[victim_name], seen
        vi = info(victim)
        assert vi["engine"]["restarts"] == 1 and vi["engine"]["pid"] != victim_info["engine"]["pid"]
        metrics = run_mesh("info", "--json", data_dir=victim.data_dir)
        assert metrics.returncode == 0

        # and it answers again, asked by name through the entry peer
        with Client(entry.data_dir, timeout_s=120) as client:
            again = client.ask("Say hello.", max_tokens=8, temperature=0.0, peer=victim_name)
        assert again.peer == vi["peer"] and again.completion_tokens > 0
    finally:
        for p in others:
            p.stop()
        entry.stop()
