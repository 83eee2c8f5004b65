"""The CLI end to end against a real `mesh-peer` process on the default model."""

import json
import signal
import stat
import subprocess
import threading
import time

import pytest

from mesh.client import Client
from mesh.errors import Cancelled, MeshError, PeerUnavailable
from support.peerproc import LONG_PROMPT, PeerProcess, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    p = PeerProcess(tmp_path_factory.mktemp("cli") / "data")
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


def test_ready_line_and_identity_file(peer):
    log = peer.log()
    assert "mesh-peer ready: peer " + peer.info["peer_id"] in log
    assert "SmolLM2" in log and peer.info["endpoint"] in log
    mode = stat.S_IMODE((peer.data_dir / "identity.key").stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE((peer.data_dir / "client.key").stat().st_mode) == 0o600


def test_ask_json(peer):
    r = run_mesh("ask", "--json", "--max-tokens", "8", "--temperature", "0", "Name a color.", data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("text", "peer", "model", "confidence", "prompt_tokens", "completion_tokens"):
        assert key in doc
    assert doc["peer"] == peer.info["peer_id"]
    assert "SmolLM2" in doc["model"]
    assert doc["text"].strip() and 0 < doc["confidence"] <= 1
    assert 1 <= doc["completion_tokens"] <= 8 and doc["prompt_tokens"] > 5


def test_ask_streams_text_then_footer(peer):
    r = run_mesh("ask", "--max-tokens", "12", "--system", "You are terse.", "Say hello.", data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    footer = r.stderr.strip().splitlines()[-1]
    assert peer.info["peer_id"][:12] in footer and "confidence" in footer and "tok/s" in footer


def test_prompt_from_stdin(peer):
    r = run_mesh("ask", "--json", "--max-tokens", "4", data_dir=peer.data_dir, input="What is 2+2?\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completion_tokens"] >= 1


def test_bad_request_is_a_clear_error(peer):
    r = run_mesh("ask", "--max-tokens", "0", "hi", data_dir=peer.data_dir)
    assert r.returncode == 2 and "max_tokens" in r.stderr


def test_info(peer):
    r = run_mesh("info", data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    assert peer.info["peer_id"] in r.stdout and "refused frames" in r.stdout
    # MESH_HOME picks the data dir when --data-dir is not given
    doc = json.loads(run_mesh("info", "--json", env={"MESH_HOME": str(peer.data_dir)}).stdout)
    assert doc["peer"] == peer.info["peer_id"] and doc["model"]["context_length"] >= 128


def test_no_peer_running_says_what_to_do(tmp_path):
    r = run_mesh("ask", "hello", data_dir=tmp_path / "empty")
    assert r.returncode == 3
    assert "no mesh peer is running" in r.stderr and "mesh-up" in r.stderr and "--embedded" in r.stderr


def test_embedded_needs_no_running_peer(tmp_path):
    r = run_mesh("ask", "--embedded", "--json", "--max-tokens", "6", "Hi!", data_dir=tmp_path / "emb")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["completion_tokens"] >= 1 and "SmolLM2" in doc["model"]
    assert not (tmp_path / "emb" / "peer.json").exists()  # an embedded peer is not the local peer


def test_sigterm_cancels_in_flight_with_an_error_and_exits_cleanly(tmp_path):
    p = PeerProcess(tmp_path / "term", "--grace", "0.5")
    try:
        p.wait_ready()
        outcome: dict = {}
        streaming = threading.Event()

        def ask():
            try:
                Client(p.data_dir).ask(LONG_PROMPT, max_tokens=2000, temperature=0,
                                       on_text=lambda _: streaming.set())
                outcome["result"] = "finished"
            except Cancelled as e:
                outcome["result"] = e

        t = threading.Thread(target=ask)
        t.start()
        wait_until(streaming.is_set, 60, every_s=0.05)  # generation is under way
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        t.join(20)
        assert not t.is_alive(), "the caller was left hanging"
        assert isinstance(outcome["result"], Cancelled) and "shutting down" in str(outcome["result"])
        assert p.proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
        assert not (p.data_dir / "peer.json").exists()
        assert "mesh-peer stopped" in p.log()
        with pytest.raises(PeerUnavailable):
            Client(p.data_dir).ask("hi", max_tokens=2)
    finally:
        p.stop()


def test_sigint_lets_a_short_request_finish(tmp_path):
    p = PeerProcess(tmp_path / "int", "--grace", "30")
    try:
        p.wait_ready()
        outcome: dict = {}
        streaming = threading.Event()

        def ask():
            outcome["answer"] = Client(p.data_dir).ask("Count to five.", max_tokens=48, temperature=0,
                                                       on_text=lambda _: streaming.set())

        t = threading.Thread(target=ask)
        t.start()
        wait_until(streaming.is_set, 60, every_s=0.05)  # the request is in flight
        p.signal(signal.SIGINT)
        t.join(60)
        assert outcome["answer"].completion_tokens >= 1
        assert p.proc.wait(30) == 0
    finally:
        p.stop()


def test_a_second_signal_stops_at_once(tmp_path):
    # README: "in-flight requests get --grace seconds to finish ... A second signal stops
    # at once": with a grace far longer than the test, only the second signal can end it
    p = PeerProcess(tmp_path / "twice", "--grace", "600")
    try:
        p.wait_ready()
        outcome: dict = {}
        streaming = threading.Event()

        def ask():
            try:
                Client(p.data_dir).ask(LONG_PROMPT, max_tokens=2000, temperature=0,
                                       on_text=lambda _: streaming.set())
                outcome["result"] = "finished"
            except MeshError as e:
                outcome["result"] = e

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        wait_until(streaming.is_set, 60, every_s=0.05)
        p.signal(signal.SIGTERM)
        # the first signal: a graceful stop, waiting for the request in flight
        wait_until(lambda: "waiting up to 600s for 1 request(s) in flight" in p.log(), 30, every_s=0.05)
        assert t.is_alive() and "result" not in outcome, outcome
        p.signal(signal.SIGINT)  # the second (either signal counts)
        t.join(30)
        assert not t.is_alive(), "the second signal left the caller waiting"
        assert isinstance(outcome["result"], Cancelled) and "shutting down" in str(outcome["result"])
        assert p.proc.wait(30) == 0
        assert "stopping now: cancelling requests in flight" in p.log() and "mesh-peer stopped" in p.log()
    finally:
        p.stop()


def test_missing_model_file_is_a_clear_error(tmp_path):
    import sys
    from pathlib import Path

    r = subprocess.run(
        [str(Path(sys.executable).parent / "mesh-peer"), "--data-dir", str(tmp_path / "d"), "--rpc-port", "0",
         "--model", str(tmp_path / "nope.gguf"), "--rpc-host", "127.0.0.1", "--no-mdns"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert str(tmp_path / "nope.gguf") in r.stderr


def test_init_invite_join(tmp_path, peer):
    # `mesh init` refuses a data dir that is already in a mesh (the peer created one)
    r = run_mesh("init", data_dir=peer.data_dir)
    assert r.returncode == 1 and "already in a mesh" in r.stderr
    r = run_mesh("init", "--name", "fresh", data_dir=tmp_path / "fresh")
    assert r.returncode == 0 and "created mesh" in r.stdout
    assert (tmp_path / "fresh" / "authority.key").exists()

    r = run_mesh("invite", "--endpoint", peer.info["endpoint"].removeprefix("tcp://"), data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("mesh1-") and "mesh-peer --join-token" in r.stderr
    r = run_mesh("join", token, "--name", "laptop", data_dir=tmp_path / "joiner")
    assert r.returncode == 0, r.stderr
    assert f"joined mesh {peer.info['mesh_id']} as laptop" in r.stdout
    assert not (tmp_path / "joiner" / "authority.key").exists()
    r = run_mesh("join", token, data_dir=tmp_path / "again")
    assert r.returncode == 1 and "used" in r.stderr
    r = run_mesh("join", "mesh1-garbage", data_dir=tmp_path / "bad")
    assert r.returncode == 1 and "malformed token" in r.stderr


def test_invite_needs_the_authority(tmp_path, peer):
    r = run_mesh("invite", data_dir=tmp_path / "nothing")
    assert r.returncode == 3  # no peer running there
