"""Durable jobs end to end: real mesh-peer processes, real SQLite, the real model."""

import json
import signal
import time

import pytest

from support.peerproc import LONG_PROMPT, PeerProcess, free_port, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]


def test_submit_returns_at_once_then_the_result_arrives(tmp_path):
    p = PeerProcess(tmp_path / "a")
    try:
        p.wait_ready()
        r = run_mesh("submit", "--max-tokens", "8", "--json", "Name a fruit.", data_dir=p.data_dir)
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)
        assert job["state"] in ("queued", "running", "done") and job["id"]
        r = run_mesh("result", job["id"], "--wait", "--json", data_dir=p.data_dir, timeout=120)
        done = json.loads(r.stdout)
        assert r.returncode == 0 and done["state"] == "done" and done["result_text"].strip()
        assert done["stats"]["peer"] == p.info["peer_id"] and done["attempts"] == 1
        listing = run_mesh("jobs", data_dir=p.data_dir)
        assert job["id"] in listing.stdout and "done" in listing.stdout
        # the same idempotency key twice: one job
        a = json.loads(run_mesh("submit", "--key", "k1", "--json", "Hi", data_dir=p.data_dir).stdout)
        b = json.loads(run_mesh("submit", "--key", "k1", "--json", "Hi", data_dir=p.data_dir).stdout)
        assert a["id"] == b["id"]
        # bad input is refused at submit, not queued to fail later
        r = run_mesh("submit", "--max-tokens", "0", "Hi", data_dir=p.data_dir)
        assert r.returncode == 2 and "max_tokens" in r.stderr
        r = run_mesh("submit", "--model", "no-such-model", "Hi", data_dir=p.data_dir)
        assert r.returncode == 2 and "no-such-model" in r.stderr and "SmolLM2" in r.stderr
        r = run_mesh("submit", "--max-tokens", "4000", "Hi", data_dir=p.data_dir)
        assert r.returncode == 2 and "context" in r.stderr
    finally:
        p.stop()


def test_kill_9_right_after_submit_the_job_survives_and_completes(tmp_path):
    p = PeerProcess(tmp_path / "a")
    p.wait_ready()
    r = run_mesh("submit", "--max-tokens", "400", "--json", "Write a long story about a lighthouse.",
                 data_dir=p.data_dir)
    job = json.loads(r.stdout)
    p.signal(signal.SIGKILL)
    p.proc.wait(10)
    p2 = PeerProcess(tmp_path / "a")
    try:
        p2.wait_ready()
        r = run_mesh("result", job["id"], "--wait", "--json", data_dir=p2.data_dir, timeout=180)
        done = json.loads(r.stdout)
        assert done["state"] == "done" and done["result_text"].strip()
    finally:
        p2.stop()


def test_nothing_can_answer_so_ask_queue_keeps_the_prompt(tmp_path):
    port = free_port()  # where the cloud would be; nothing listens there
    # a lone peer whose context cannot hold the answer asked for, and the cloud (which
    # could) unreachable: nothing can answer now, though something could later
    p = PeerProcess(tmp_path / "a", "--ctx", "128", "--cloud-url", f"http://127.0.0.1:{port}/v1",
                    "--cloud-model", "cloud")
    try:
        p.wait_ready()
        r = run_mesh("ask", "--max-tokens", "500", "Hello", data_dir=p.data_dir)
        assert r.returncode == 1 and "--queue" in r.stderr
        r = run_mesh("ask", "--queue", "--json", "--max-tokens", "500", "Hello", data_dir=p.data_dir)
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)["queued"]
        time.sleep(1.0)
        state = json.loads(run_mesh("result", job["id"], "--json", data_dir=p.data_dir).stdout)["state"]
        assert state in ("queued", "running")  # waiting, not lost, not failed
        r = run_mesh("cancel", job["id"], data_dir=p.data_dir)
        assert r.returncode == 0 and f"cancelled job {job['id']}" in r.stdout, r.stderr
        assert json.loads(run_mesh("result", job["id"], "--json", data_dir=p.data_dir).stdout)["state"] == "cancelled"
    finally:
        p.stop()


def test_cancel_a_running_job_stops_it_and_it_stays_cancelled(tmp_path):
    p = PeerProcess(tmp_path / "c")
    try:
        p.wait_ready()

        def job(job_id):
            return json.loads(run_mesh("result", job_id, "--json", data_dir=p.data_dir).stdout)

        def engine_running():
            return json.loads(run_mesh("info", "--json", data_dir=p.data_dir).stdout)["engine"]["load"]["running"]

        job_id = json.loads(run_mesh("submit", "--max-tokens", "2000", "--temperature", "0", "--json",
                                     LONG_PROMPT, data_dir=p.data_dir).stdout)["id"]
        wait_until(lambda: job(job_id)["state"] == "running" and engine_running() == 1, 60, every_s=0.1)
        r = run_mesh("cancel", job_id, data_dir=p.data_dir)
        assert r.returncode == 0 and f"cancelled job {job_id}" in r.stdout, r.stderr
        assert job(job_id)["state"] == "cancelled"
        # its generation stopped, and not by running to its end: the runner says it stopped it
        wait_until(lambda: f"job {job_id} stopped while running (cancelled)" in p.log(), 30, every_s=0.1)
        wait_until(lambda: engine_running() == 0, 30, every_s=0.1)
        # the peer goes on: another job completes, and the cancelled one never gets a result
        other = json.loads(run_mesh("submit", "--max-tokens", "4", "--json", "Hi", data_dir=p.data_dir).stdout)["id"]
        r = run_mesh("result", other, "--wait", "--json", data_dir=p.data_dir, timeout=120)
        assert json.loads(r.stdout)["state"] == "done", r.stdout
        cancelled = job(job_id)
        assert cancelled["state"] == "cancelled" and not cancelled.get("result_text") and cancelled["attempts"] == 1
        # cancelling what has finished says so, and fails
        r = run_mesh("cancel", other, data_dir=p.data_dir)
        assert r.returncode == 1 and "already finished" in r.stderr and "done" in r.stderr
        # an unknown id: the job store says so
        r = run_mesh("cancel", "no-such-job", data_dir=p.data_dir)
        assert r.returncode == 1 and "no job 'no-such-job'" in r.stderr
    finally:
        p.stop()


def test_cloud_down_and_no_local_fit_jobs_wait_then_complete_when_it_returns(tmp_path):
    from support.openai_server import LlamaServer

    port = free_port()  # for the cloud, which is down at first
    # the peer's own model cannot hold these answers (--ctx 128, which llama.cpp makes 256): only the cloud can
    p = PeerProcess(tmp_path / "a", "--ctx", "128", "--cloud-url", f"http://127.0.0.1:{port}/v1",
                    "--cloud-model", "cloud")
    try:
        p.wait_ready()
        ids = [json.loads(run_mesh("submit", "--max-tokens", "400", "--json", f"Question {i}?",
                                   data_dir=p.data_dir).stdout)["id"] for i in range(3)]
        time.sleep(4)  # several tries against a cloud that is down
        for job_id in ids:
            job = json.loads(run_mesh("result", job_id, "--json", data_dir=p.data_dir).stdout)
            assert job["state"] in ("queued", "running"), job  # waiting: not failed, not lost
        with LlamaServer(port=port, n_ctx=512):
            for job_id in ids:
                r = run_mesh("result", job_id, "--wait", "--json", "--timeout", "120", data_dir=p.data_dir,
                             timeout=150)
                done = json.loads(r.stdout)
                assert done["state"] == "done" and done["stats"]["peer"] == "cloud", done
    finally:
        p.stop()


def test_status_shows_jobs(tmp_path):
    p = PeerProcess(tmp_path / "s")
    try:
        p.wait_ready()
        job = json.loads(run_mesh("submit", "--max-tokens", "4", "--json", "Hi", data_dir=p.data_dir).stdout)
        run_mesh("result", job["id"], "--wait", data_dir=p.data_dir, timeout=120)
        r = run_mesh("status", data_dir=p.data_dir)
        assert r.returncode == 0 and "jobs" in r.stdout and "1 done" in r.stdout, r.stdout
        doc = json.loads(run_mesh("status", "--json", data_dir=p.data_dir).stdout)
        assert doc["info"]["jobs"]["done"] == 1
    finally:
        p.stop()
