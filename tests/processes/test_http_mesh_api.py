"""The mesh's own HTTP endpoints (mesh.http.mesh_api: jobs and peers) on a real mesh-peer
with the real default model and keys required: a job submitted over HTTP is answered and
its result read with and without waiting, the members listed, and bad input refused with
the error that names it while the peer keeps serving."""

import json
import urllib.error
import urllib.request

import pytest

from mesh.http.mesh_api import job_submission, wait_seconds
from mesh.http.openai_schema import ApiError
from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

MODEL = "SmolLM2-135M-Instruct"


def call(peer, method: str, path: str, body=None, key: str | None = "peer") -> tuple[int, dict]:
    req = urllib.request.Request(peer["url"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if key is not None:
        req.add_header("Authorization", "Bearer " + (peer["key"] if key == "peer" else key))
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    data = tmp_path_factory.mktemp("mesh-api") / "data"
    made = run_mesh("keys", "create", "tests", data_dir=data)
    assert made.returncode == 0, made.stderr
    p = PeerProcess(data, "--name", "beta", "--ctx", "1024", "--threads", "1", "--http-open-loopback", "no",
                    "--http-rate", "0")
    try:
        info = p.wait_ready()
        yield {"url": info["http"], "key": made.stdout.strip(), "peer_id": info["peer_id"]}
    finally:
        p.stop()


def test_a_job_submitted_over_http_is_answered_and_read(peer):
    status, body = call(peer, "POST", "/v1/mesh/jobs", {
        "prompt": "Name a fruit.", "model": MODEL, "max_tokens": 8, "idempotency_key": "fruit-1",
        "mesh": {"local_only": True, "no_escalate": True}})
    assert status == 202, body
    job = body["job"]
    assert job["state"] in ("queued", "running", "done") and job["prompt"] == "Name a fruit."
    assert job["route"] == {"model": MODEL, "local_only": True, "no_escalate": True}
    # the same key and request: the same job
    again = call(peer, "POST", "/v1/mesh/jobs", {
        "prompt": "Name a fruit.", "model": MODEL, "max_tokens": 8, "idempotency_key": "fruit-1",
        "mesh": {"local_only": True, "no_escalate": True}})
    assert again[0] == 202 and again[1]["job"]["id"] == job["id"]

    status, body = call(peer, "GET", f"/v1/mesh/jobs/{job['id']}?wait=120")
    assert status == 200, body
    done = body["job"]
    assert done["state"] == "done" and done["result_text"].strip()
    assert done["stats"]["peer"] == peer["peer_id"] and done["stats"]["model"] == MODEL
    assert 0 <= done["stats"]["confidence"] <= 1
    status, body = call(peer, "GET", f"/v1/mesh/jobs/{job['id']}")  # no wait: as it is
    assert status == 200 and body["job"]["state"] == "done"


def test_peers_lists_the_members(peer):
    status, body = call(peer, "GET", "/v1/mesh/peers")
    assert status == 200, body
    assert body["self"] == peer["peer_id"]
    [me] = body["peers"]
    assert me["peer_id"] == peer["peer_id"] and me["name"] == "beta" and me["self"] is True
    assert me["state"] == "alive" and me["model"] == MODEL


@pytest.mark.parametrize("method,path,body,key,status,code", [
    ("GET", "/v1/mesh/peers", None, None, 401, "invalid_api_key"),
    ("POST", "/v1/mesh/jobs", {"prompt": "hi"}, "mesh-wrong", 401, "invalid_api_key"),
    ("GET", "/v1/mesh/jobs/nosuchjob", None, "peer", 404, "job_not_found"),
    ("GET", "/v1/mesh/jobs/nosuchjob?wait=abc", None, "peer", 400, "invalid_type"),
    ("GET", "/v1/mesh/jobs/nosuchjob?wait=301", None, "peer", 400, "invalid_value"),
    ("POST", "/v1/mesh/jobs", {"prompt": "hi", "messages": []}, "peer", 400, "invalid_value"),
    ("POST", "/v1/mesh/jobs", {"prompt": ""}, "peer", 400, "invalid_type"),
    ("POST", "/v1/mesh/jobs", {"prompt": "hi", "mesh": {"threshold": 2}}, "peer", 400, "invalid_value"),
    ("POST", "/v1/mesh/jobs", {"prompt": "hi", "model": "no-such-model"}, "peer", 400, "invalid_value"),
    ("POST", "/v1/mesh/jobs", {"prompt": "hi", "max_tokens": "many"}, "peer", 400, "invalid_value"),
    ("POST", "/v1/mesh/jobs", [1, 2], "peer", 400, "invalid_type"),
])
def test_bad_requests_are_refused_with_what_is_wrong(peer, method, path, body, key, status, code):
    got, answer = call(peer, method, path, body, key)
    assert got == status, answer
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert "jobs.db" not in answer["error"]["message"]  # no paths of the peer's machine
    assert call(peer, "GET", "/v1/mesh/peers")[0] == 200  # and the peer keeps serving


def test_submission_shape():
    args = job_submission({"messages": [{"role": "user", "content": "x"}], "model": "mesh", "seed": 3,
                           "temperature": None, "mesh": {"peer": "alpha", "session": None}})
    assert args == {"ask": {"messages": [{"role": "user", "content": "x"}], "seed": 3, "route": {"peer": "alpha"}}}
    assert job_submission({"prompt": "x", "idempotency_key": "k"})["key"] == "k"
    with pytest.raises(ApiError):
        job_submission({"prompt": "x", "idempotency_key": ""})
    assert wait_seconds({}) == 0 and wait_seconds({"wait": "2.5"}) == 2.5
    for bad in ("nan", "-1", "inf"):
        with pytest.raises(ApiError):
            wait_seconds({"wait": bad})
