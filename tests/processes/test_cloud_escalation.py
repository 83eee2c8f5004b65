"""A real mesh-peer process whose answers are not confident enough escalates to the
cloud: a real OpenAI-compatible server (python -m llama_cpp.server) on loopback, reached
by the same OpenAIBackend a real provider would be. --local-only never touches it."""

import json

import pytest

from support.openai_server import LlamaServer
from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def cloud():
    with LlamaServer(n_ctx=512) as server:
        yield server


@pytest.fixture(scope="module")
def peer(tmp_path_factory, cloud):
    p = PeerProcess(tmp_path_factory.mktemp("cloud") / "data", "--cloud-url", cloud.base_url,
                    "--cloud-model", "smollm2-cloud")
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


def ask(peer, *extra):
    r = run_mesh("ask", "--json", "--max-tokens", "8", "--temperature", "0", *extra, "Name a color.",
                 data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_no_confident_peer_so_the_cloud_answers(peer):
    a = ask(peer, "--threshold", "1.0")  # no local answer can be confident enough
    assert a["escalated"] and a["peer"] == "cloud" and a["model"] == "smollm2-cloud"
    assert [p["cloud"] for p in a["path"]] == [False, True]
    assert a["text"].strip()


def test_local_only_never_reaches_the_cloud(peer, cloud):
    a = ask(peer, "--threshold", "1.0", "--local-only")
    assert a["peer"] == peer.info["peer_id"] and not any(p["cloud"] for p in a["path"])
    assert "local-only" in a["path"][-1]["reason"] or len(a["path"]) == 1


def test_a_confident_answer_stays_in_the_mesh(peer):
    a = ask(peer, "--threshold", "0.0")
    assert a["peer"] == peer.info["peer_id"] and not a["escalated"]


def test_the_api_key_is_never_logged(tmp_path, cloud):
    import os

    secret = "sk-test-not-a-real-key-1234567890"
    os.environ["MESH_CLOUD_API_KEY"] = secret
    try:
        p = PeerProcess(tmp_path / "k", "--cloud-url", cloud.base_url, "--cloud-model", "m", "--log-level", "debug")
        try:
            p.wait_ready()
            run_mesh("ask", "--threshold", "1.0", "--max-tokens", "4", "hi", data_dir=p.data_dir)
            info = run_mesh("info", "--json", data_dir=p.data_dir).stdout
            peers = run_mesh("peers", "--json", data_dir=p.data_dir).stdout
        finally:
            p.stop()
        assert secret not in p.log() and secret not in info and secret not in peers
    finally:
        del os.environ["MESH_CLOUD_API_KEY"]


def test_a_peer_serves_through_an_existing_engine(tmp_path, cloud):
    # the "engine" here is the same OpenAI-compatible server (Ollama, vLLM, llama-server in life)
    p = PeerProcess(tmp_path / "engine", "--engine-url", cloud.base_url, "--engine-model", "engine-model",
                    "--engine-context", "512")
    try:
        p.wait_ready()
        a = ask(p, "--no-escalate")
        assert a["model"] == "engine-model" and a["peer"] == p.info["peer_id"] and a["text"].strip()
        peers = json.loads(run_mesh("peers", "--json", data_dir=p.data_dir).stdout)
        assert peers[0]["meta"]["models"][0]["name"] == "engine-model"
    finally:
        p.stop()
