"""Two real models on one real peer (issue 15): SmolLM2 loaded at start, Gemma 3 270M on
disk until a request names it, then in an engine process of its own, and unloaded again
after the keep-alive. Gossip says which is loaded; the escalation ladder climbs from one
to the other on the same peer."""

from __future__ import annotations

import json

import psutil
import pytest

from mesh.inference.known_models import gemma3_270m_path
from mesh.inference.models import default_model_path
from support.peerproc import PeerProcess, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

SMOL, GEMMA = "SmolLM2-135M-Instruct", "gemma-3-270m"
KEEP_ALIVE_S = 4


def own_models(peer: PeerProcess) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    me = next(m for m in json.loads(r.stdout) if m.get("self"))
    return {m["name"]: m for m in (me.get("meta") or {}).get("models", [])}


def holding_helper(holder: PeerProcess) -> tuple[str, str]:
    """Once ``holder`` is up: the default model in its store as "helper"; its address and
    a join token for the next peer."""
    join = holder.wait_ready()["endpoint"].removeprefix("tcp://")
    added = run_mesh("models", "add", str(default_model_path()), "--name", "helper", data_dir=holder.data_dir)
    assert added.returncode == 0, added.stderr
    return join, run_mesh("invite", data_dir=holder.data_dir).stdout.strip()


def holder_alive(peer: PeerProcess) -> bool:
    r = run_mesh("peers", "--json", data_dir=peer.data_dir)
    return r.returncode == 0 and any(m["name"] == "holder" and m["state"] == "alive" for m in json.loads(r.stdout))


def engines(peer: PeerProcess) -> int:
    """Live engine processes under the peer. One that has exited but is not reaped yet
    (a zombie, its cmdline gone) is not serving, so it does not count."""
    count = 0
    for c in psutil.Process(peer.proc.pid).children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "mesh.inference.engine_main" in " ".join(c.cmdline()):
                count += 1
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return count


def ask(peer: PeerProcess, prompt: str, *extra: str) -> dict:
    r = run_mesh("ask", "--json", "--max-tokens", "16", "--temperature", "0", "--seed", "1", *extra, prompt,
                 data_dir=peer.data_dir)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_second_model_loads_when_asked_for_and_unloads_after_its_keep_alive(tmp_path):
    peer = PeerProcess(tmp_path / "solo", "--name", "solo", "--no-http", "--model", str(default_model_path()),
                       "--model", str(gemma3_270m_path()), "--keep-alive", str(KEEP_ALIVE_S))
    try:
        peer.wait_ready()
        wait_until(lambda: set(own_models(peer)) == {SMOL, GEMMA}, 30)
        models = own_models(peer)
        assert "cold" not in models[SMOL] and models[GEMMA]["cold"] is True and models[GEMMA]["load_s"] > 0
        assert engines(peer) == 1

        answer = ask(peer, "What is the capital of France?", "--model", GEMMA)
        assert answer["model"] == GEMMA and "Paris" in answer["text"]
        assert engines(peer) == 2
        wait_until(lambda: "cold" not in own_models(peer)[GEMMA], 10)

        # the ladder climbs to the stronger model on the same peer (SmolLM2 0.505 here)
        climbed = ask(peer, "Complete: one, two, three,")
        assert [a["model"] for a in climbed["path"]] == [SMOL, GEMMA]

        wait_until(lambda: engines(peer) == 1, KEEP_ALIVE_S + 20)  # idle for the keep-alive: unloaded
        wait_until(lambda: own_models(peer)[GEMMA].get("cold") is True, 10)
        assert own_models(peer)[SMOL].get("cold") is None  # the first model stays
    finally:
        peer.stop()


def test_auto_pull_fetches_a_named_model_from_the_mesh_and_serves_it(tmp_path):
    # "helper" is the default model under another name, in the store of a peer that serves nothing
    holder = PeerProcess(tmp_path / "holder", "--name", "holder", "--no-http", "--no-model")
    puller = None
    try:
        join, token = holding_helper(holder)
        puller = PeerProcess(tmp_path / "puller", "--name", "puller", "--join-token", token, "--join", join,
                             "--no-http", "--model", "helper", "--auto-pull", "--keep-alive", "60")
        puller.wait_ready()
        wait_until(lambda: "helper" in own_models(puller), 120)  # pulled, then offered (cold)
        assert own_models(puller)["helper"]["cold"] is True
        answer = ask(puller, "What is the chemical symbol for water?", "--model", "helper")
        assert answer["model"] == "helper" and answer["peer"] == puller.info["peer_id"]
        stored = json.loads(run_mesh("models", "list", "--json", data_dir=puller.data_dir).stdout)
        row = next(m for m in stored["models"] if m["name"] == "helper")
        assert sorted(row["holders"]) == sorted([holder.info["peer_id"], puller.info["peer_id"]])
        assert row["loaded_on"] == [puller.info["peer_id"]]

        # restarted with it in its store, the named model is its first: loaded at start, and
        # gossiped and answered under its name (its file in the store is named by its hash)
        puller.stop()
        puller = PeerProcess(tmp_path / "puller", "--name", "puller", "--no-http", "--model", "helper")
        puller.wait_ready()
        wait_until(lambda: "helper" in own_models(puller), 30)
        assert set(own_models(puller)) == {"helper"} and "cold" not in own_models(puller)["helper"]
        assert ask(puller, "What is the chemical symbol for water?", "--model", "helper")["model"] == "helper"
    finally:
        if puller is not None:
            puller.stop()
        holder.stop()


def test_a_named_model_the_store_lacks_is_an_error_without_auto_pull(tmp_path):
    peer = PeerProcess(tmp_path / "lonely", "--no-http", "--model", "nowhere-7B")
    try:
        assert peer.proc.wait(60) != 0
        assert "no model 'nowhere-7B' in this peer's model store" in peer.log() and "--auto-pull" in peer.log()
    finally:
        peer.stop()


def test_a_prompt_for_a_model_nobody_serves_is_pulled_and_answered_with_auto_pull(tmp_path):
    # "helper" sits in the store of a peer that serves nothing; the asker serves its own model
    holder = PeerProcess(tmp_path / "holder", "--name", "holder", "--no-http", "--no-model")
    asker = None
    try:
        join, token = holding_helper(holder)
        asker = PeerProcess(tmp_path / "asker", "--name", "asker", "--join-token", token, "--join", join,
                            "--no-http", "--auto-pull", "--keep-alive", "60")
        asker.wait_ready()
        wait_until(lambda: SMOL in own_models(asker), 30)
        wait_until(lambda: holder_alive(asker), 30)
        assert "helper" not in own_models(asker)  # nobody serves it: it is only in the holder's store
        answer = ask(asker, "What is the chemical symbol for water?", "--model", "helper")
        assert answer["model"] == "helper" and answer["peer"] == asker.info["peer_id"]
        assert "auto-pull: helper is here for a prompt" in asker.log()
    finally:
        if asker is not None:
            asker.stop()
        holder.stop()
