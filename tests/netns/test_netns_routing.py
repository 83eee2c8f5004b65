"""Routing across real mesh-peer processes on simulated hosts: kill -9 of the peer
serving a prompt mid-stream, and the prompt completes on another peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import netns
from support.meshhosts import Host, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns, pytest.mark.model]

ASKER = str(Path(__file__).resolve().parents[1] / "support" / "asker.py")


lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made


def test_kill_9_of_the_serving_peer_mid_stream_completes_elsewhere(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = [Host(lab[i], tmp_path, f"h{i}") for i in range(3)]
    # h0 is the entry: its context is too small for the prompt, so the mesh must serve it
    hosts[0].start("--ctx", "128")
    for h in hosts[1:]:
        h.start("--join-token", hosts[0].invite())
    try:
        wait_until(lambda: all(len(h.states()) == 3 and set(h.states().values()) == {"alive"} for h in hosts),
                   "mesh of three", 60)
        wait_until(lambda: all(len(ms := h.peers()) == 3 and all((m.get("meta") or {}).get("models") for m in ms.values())
                               for h in hosts), "capabilities (models, context) gossiped", 30)
        proc = lab[0].popen([sys.executable, ASKER, str(hosts[0].data), "Tell me a long story about a lighthouse.",
                             "300", json.dumps({"no_escalate": True})],
                            stdout=subprocess.PIPE, text=True)
        serving = None
        lines = []
        for line in proc.stdout:
            doc = json.loads(line)
            lines.append(doc)
            if "step" in doc and doc["step"].get("name"):
                serving = doc["step"]["name"]
            if "t" in doc and serving is not None:
                break  # text is streaming from `serving`
        assert serving in ("h1", "h2"), lines
        victim = next(h for h in hosts if h.name == serving)
        victim.kill9()
        for line in proc.stdout:
            lines.append(json.loads(line))
        proc.wait(60)
        final = lines[-1]
        assert "answer" in final, lines[-3:]
        answer = final["answer"]
        survivor = "h2" if serving == "h1" else "h1"
        assert answer["route"]["name"] == survivor and answer["text"].strip()
        restarts = [d["step"] for d in lines if "step" in d and d["step"].get("restart")]
        assert restarts and restarts[-1]["name"] == survivor  # the caller was told the text restarts
    finally:
        for h in hosts:
            h.stop()
