"""One model across several peers (issue 16), on simulated hosts (network namespaces,
real mesh-peer processes, the real default model, the real CLI).

The borrower's --models-ram (45 MB) and each lender's --lend-memory (35 MB) are all
smaller than the model (98 MB): no single peer can hold it, so it answers only through
the split, its layers on the lenders reached through the mesh's tunnel. Its greedy
answer is the answer of the same model loaded whole. A lender killed -9 mid-answer ends
that answer with a clear error; the model waits, saying why, until a replacement lender
joins, then answers again. A host outside the mesh cannot reach a lender's ggml RPC
server (it listens on the lender's loopback only) and its tunnel refuses it, counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mesh.inference.models import default_model_path
from support import netns
from support.meshhosts import BIN, PORT, Host, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns, pytest.mark.model]

lab_factory = netns.netns_lab
PROMPT = "What are the three primary colors?"
ASK = ("ask", "--json", "--max-tokens", "24", "--temperature", "0", "--seed", "1")
LEND = ("--no-model", "--lend-memory", "0.035")
BORROW = ("--model", str(default_model_path()), "--models-ram", "0.045")


def _info(h: Host) -> dict:
    r = h.mesh("info", "--json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def _split(h: Host) -> dict:
    return (_info(h).get("memory_pool") or {}).get("split") or {}


def _engine_state(h: Host) -> str:
    return str((_info(h).get("engine") or {}).get("state"))


def _pid(h: Host) -> int:
    return json.loads((h.data / "peer.json").read_text())["pid"]


NON_MEMBER = r"""
import socket, sys, zmq
from mesh.identity.transport import key_from_text
host, ggml_port, tunnel_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    socket.create_connection((host, ggml_port), timeout=3).close()
    print("ggml: connected")
except OSError as e:
    print("ggml: refused", type(e).__name__)
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
pub, sec = zmq.curve_keypair()
server = key_from_text(sys.argv[4])
s.setsockopt(zmq.CURVE_PUBLICKEY, pub); s.setsockopt(zmq.CURVE_SECRETKEY, sec); s.setsockopt(zmq.CURVE_SERVERKEY, server)
s.setsockopt(zmq.RCVTIMEO, 5000); s.setsockopt(zmq.LINGER, 0)
s.connect(f"tcp://{host}:{tunnel_port}")
s.send_multipart([b"O", b"\x07" * 32])
try:
    print("tunnel:", s.recv_multipart()[0].decode())
except zmq.Again:
    print("tunnel: no answer")
"""


def test_a_model_no_peer_can_hold_answers_through_lenders_and_survives_losing_one(lab_factory, tmp_path):
    lab = lab_factory(5)  # the fifth host runs no peer: an outsider
    hosts = [Host(lab[i], tmp_path, n) for i, n in enumerate(("lender-a", "lender-b", "big", "spare"))]
    a, b, big, spare = hosts
    try:
        a.start(*LEND)
        b.start(*LEND, "--join-token", a.invite())
        big.start(*BORROW, "--join-token", a.invite())
        spare.start("--no-model", "--join-token", a.invite())  # a member lending nothing yet
        wait_until(lambda: _engine_state(big) == "ready", "the split model ready", 120)
        split = _split(big)
        layers = {p["name"]: p["layers"] for p in split["layers"]}
        assert set(layers) == {"big", "lender-a", "lender-b"} and all(n > 0 for n in layers.values()), split
        assert sum(layers.values()) == 31  # 30 layers and the output head
        assert "[layers:" in big.mesh("peers").stdout  # mesh peers shows who holds which layers

        # the greedy answer through the split is the whole model's, loaded in one process
        answer = json.loads(big.mesh(*ASK, PROMPT).stdout)
        whole = json.loads(big.ns.run([str(BIN / "mesh"), *ASK, "--embedded", "--data-dir", str(tmp_path / "solo"),
                                       PROMPT], timeout=120).stdout)
        assert answer["text"] == whole["text"] and answer["text"].strip()
        tunnels = split["tunnels"]
        assert len(tunnels) == 2 and all(t["bytes_in"] > 0 for t in tunnels)
        # the lenders' layers' weights went through the tunnels (about 3 MB a slot; the
        # borrower's ports count what its model process sent out)
        remote = layers["lender-a"] + layers["lender-b"]
        assert sum(t["bytes_out"] for t in tunnels) > remote * 2_000_000, tunnels

        # a host outside the mesh: the ggml RPC port is on the lender's loopback, the tunnel refuses it
        info_a = _info(a)
        lending = info_a["memory_pool"]["lending"]
        ggml_port = int(lending["ggml_rpc"].rsplit(":", 1)[1])
        r = lab[4].run([sys.executable, "-c", NON_MEMBER, lab[0].ip, str(ggml_port), str(lending["tunnel_port"]),
                          info_a["transport_key"]], timeout=30)
        assert "ggml: refused" in r.stdout and "tunnel: R" in r.stdout, r.stdout + r.stderr
        after = _info(a)["memory_pool"]["lending"]
        assert after["tunnel"]["refused"].get("bad_grant", 0) >= 1

        # lender-a dies (kill -9) mid-answer: that answer ends, clearly, well within its deadline
        long = big.ns.popen([str(BIN / "mesh"), "ask", "--max-tokens", "400", "--temperature", "0",
                             "Write a long story about a lighthouse keeper.", "--data-dir", str(big.data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = long.stdout.read(20)  # the answer has started
        assert first
        os.kill(_pid(a), signal.SIGKILL)
        started = time.monotonic()
        _, err = long.communicate(timeout=90)
        assert long.returncode != 0 and time.monotonic() - started < 60
        assert "generation" in err or "engine" in err or "no peer" in err.lower(), err

        # without lender-a the model cannot be placed: it waits and says why
        wait_until(lambda: _engine_state(big) == "waiting", "the split model waiting for lenders", 90)
        assert "--lend-memory" in (_split(big).get("problem") or "")
        # a replacement lender joins: the model is planned again and answers the same
        spare.stop()
        spare.start(*LEND, "--join", f"{lab[1].ip}:{PORT}")  # restarted, lending
        wait_until(lambda: _engine_state(big) == "ready", "the split model back", 120)
        assert {p["name"] for p in _split(big)["layers"]} == {"big", "lender-b", "spare"}
        again = json.loads(big.mesh(*ASK, PROMPT).stdout)
        assert again["text"] == whole["text"]
    finally:
        for h in hosts:
            h.stop()
