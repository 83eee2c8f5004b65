"""/metrics, /healthz and /readyz of a real mesh-peer process with the real default model,
after real traffic: `mesh ask` over RPC and a prompt over HTTP."""

import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def scrape(base: str) -> dict:
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_metrics_move_with_real_traffic(tmp_path):
    p = PeerProcess(tmp_path / "a", "--name", "alpha", "--ctx", "512", "--threads", "1")
    try:
        base = p.wait_ready()["http"]
        assert get(base + "/healthz")[0] == 200
        status, _, body = get(base + "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        before = scrape(base)
        assert before[("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))] == 0

        for prompt in ("Name a colour.", "Name a fruit."):
            r = run_mesh("ask", prompt, "--max-tokens", "8", data_dir=tmp_path / "a")
            assert r.returncode == 0, r.stderr
        req = urllib.request.Request(base + "/api/ask", data=json.dumps({"prompt": "Say hi", "max_tokens": 6}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert "event: final" in resp.read().decode()

        s = scrape(base)
        assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))] == 2
        assert s[("mesh_requests_total", (("entry", "http"), ("outcome", "ok")))] == 1
        assert s[("mesh_request_duration_seconds_count", (("entry", "rpc"),))] == 2
        assert s[("mesh_request_duration_seconds_sum", (("entry", "rpc"),))] > 0
        assert s[("mesh_time_to_first_token_seconds_count", (("entry", "rpc"),))] == 2
        tokens = sum(v for (name, _), v in s.items() if name == "mesh_tokens_generated_total")
        assert 3 <= tokens <= 22  # at most 8 + 8 + 6
        assert s[("mesh_answer_confidence_count", ())] == 3
        assert s[("mesh_members", (("state", "alive"),))] == 1
        assert s[("mesh_rpc_calls_total", (("result", "ok"),))] >= 2
        assert s[("mesh_backend_requests", (("state", "waiting"),))] == 0
        assert s[("mesh_rpc_rejections_total", (("reason", "bad_signature"),))] == 0
        assert s[("process_resident_memory_bytes", ())] > 0
        assert s[("mesh_cache_evictions_total", (("cache", "nonce"),))] == 0
        assert s[("mesh_revocations", ())] == 0 and s[("mesh_key_rotations_total", ())] == 0
        assert s[("mesh_certificate_expiry_seconds", ())] > time.time() + 20 * 86400
        info = next(dict(k[1]) for k in s if k[0] == "mesh_peer_info")
        assert info["name"] == "alpha" and info["model"].startswith("SmolLM2")

        _, _, body = get(base + "/api/mesh")
        recent = json.loads(body)["requests"]
        assert [r["entry"] for r in recent] == ["http", "rpc", "rpc"]
        assert recent[-1]["prompt"] == "Name a colour." and recent[0]["peer"] and recent[0]["model"]
    finally:
        assert p.stop() == 0, p.log()
