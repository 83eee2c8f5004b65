"""OpenTelemetry traces across two real peers (issue 17): the real OTLP/HTTP exporter of
each mesh-peer sends to a receiver in this test, which decodes the protobuf. A prompt
entered at alpha and answered by beta is one trace: alpha's mesh.ask > mesh.step >
mesh.attempt, and beta's mesh.generate as the attempt's child, with the answer's model,
tokens, time to first token and confidence. An HTTP client's traceparent makes the
prompt part of the client's own trace."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from support.peerproc import PeerProcess, run_mesh, wait_until

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with outer.lock:
                    for rs in req.resource_spans:
                        res = {a.key: _value(a.value) for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for sp in ss.spans:
                                outer.spans.append({
                                    "name": sp.name, "trace": sp.trace_id.hex(), "id": sp.span_id.hex(),
                                    "parent": sp.parent_span_id.hex(), "resource": res,
                                    "attrs": {a.key: _value(a.value) for a in sp.attributes},
                                    "status": sp.status.code,
                                })
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]

    def close(self) -> None:
        self.server.shutdown()


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def exporting(receiver, monkeypatch):
    """Peers started in the test export their spans to ``receiver``, in 0.2 s batches."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    return receiver


def _joined(first: PeerProcess, info: dict, data_dir, name: str, *extra: str) -> PeerProcess:
    """A peer enrolled by ``first`` and joined through it."""
    token = run_mesh("invite", data_dir=first.data_dir).stdout.strip()
    return PeerProcess(data_dir, "--name", name, *extra, "--join-token", token,
                       "--join", info["endpoint"].removeprefix("tcp://"))


def test_a_prompt_answered_by_another_peer_is_one_trace_across_both(tmp_path, exporting):
    receiver = exporting
    a = PeerProcess(tmp_path / "alpha", "--name", "alpha", "--threads", "1")
    b = None
    try:
        info_a = a.wait_ready()
        b = _joined(a, info_a, tmp_path / "beta", "beta", "--threads", "1")
        info_b = b.wait_ready()
        wait_until(lambda: '"beta"' in run_mesh("peers", "--json", data_dir=a.data_dir).stdout, 30)
        r = run_mesh("ask", "--json", "--peer", "beta", "--max-tokens", "8", "--temperature", "0", "Say hello.",
                     data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["peer"] == info_b["peer_id"]

        # an HTTP client's own trace: its traceparent is the parent of alpha's mesh.ask
        req = urllib.request.Request(f"{info_a['http']}/v1/chat/completions", method="POST", data=json.dumps({
            "model": "mesh", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200

        wait_until(lambda: any(s["attrs"].get("mesh.peer") == info_b["peer_id"] for s in receiver.named("mesh.generate"))
                   and any(s["trace"] == CLIENT_TRACE for s in receiver.named("mesh.ask")), 30)
        gen = next(s for s in receiver.named("mesh.generate") if s["resource"].get("mesh.peer.name") == "beta")
        asks = [s for s in receiver.named("mesh.ask") if s["trace"] == gen["trace"]]
        assert len(asks) == 1
        ask = asks[0]
        assert ask["resource"]["service.instance.id"] == info_a["peer_id"]
        assert ask["resource"]["service.name"] == "mesh-peer" and ask["parent"] == ""  # the CLI sent no context
        step = next(s for s in receiver.named("mesh.step") if s["parent"] == ask["id"])
        attempt = next(s for s in receiver.named("mesh.attempt") if s["parent"] == step["id"])
        assert attempt["attrs"]["mesh.peer"] == info_b["peer_id"] and attempt["attrs"]["mesh.peer.name"] == "beta"
        # beta's generation is the child of alpha's attempt: the context crossed the RPC call
        assert gen["parent"] == attempt["id"] and gen["trace"] == ask["trace"]
        assert gen["resource"]["service.instance.id"] == info_b["peer_id"]
        assert gen["attrs"]["mesh.model"] == answer["model"]
        assert gen["attrs"]["mesh.completion_tokens"] == answer["completion_tokens"] > 0
        assert 0 < gen["attrs"]["mesh.time_to_first_token_s"] < 60
        assert 0 <= gen["attrs"]["mesh.confidence"] <= 1
        assert ask["attrs"]["mesh.answered_by"] == info_b["peer_id"] and ask["attrs"]["mesh.pinned_peer"]

        http_ask = next(s for s in receiver.named("mesh.ask") if s["trace"] == CLIENT_TRACE)
        assert http_ask["parent"] == CLIENT_SPAN and http_ask["attrs"]["mesh.entry"] == "http"
    finally:
        if b is not None:
            b.stop()
        a.stop()


def test_a_job_handed_over_is_one_trace_with_its_run_on_the_executor(tmp_path, exporting):
    receiver = exporting
    # gamma serves no model: a job submitted there is handed to alpha, which runs it
    a = PeerProcess(tmp_path / "alpha", "--name", "alpha", "--threads", "1")
    g = None
    try:
        info_a = a.wait_ready()
        g = _joined(a, info_a, tmp_path / "gamma", "gamma", "--no-model")
        info_g = g.wait_ready()
        wait_until(lambda: '"alpha"' in run_mesh("peers", "--json", data_dir=g.data_dir).stdout, 30)
        r = run_mesh("submit", "--json", "--max-tokens", "6", "Say hi.", data_dir=g.data_dir)
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout)["id"]
        r = run_mesh("result", job_id, "--wait", "--json", data_dir=g.data_dir, timeout=120)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: any(s["resource"].get("mesh.peer.name") == "alpha" for s in receiver.named("mesh.job")), 30)
        owner_job = next(s for s in receiver.named("mesh.job") if s["resource"].get("mesh.peer.name") == "gamma")
        handover = next(s for s in receiver.named("mesh.job.handover") if s["parent"] == owner_job["id"])
        assert handover["attrs"]["mesh.peer"] == info_a["peer_id"] and handover["attrs"]["mesh.job.id"] == job_id
        assert owner_job["attrs"]["mesh.job.outcome"] == "handed over"
        ran = next(s for s in receiver.named("mesh.job") if s["resource"].get("mesh.peer.name") == "alpha")
        assert ran["parent"] == handover["id"] and ran["trace"] == owner_job["trace"]  # crossed the hand-over
        assert ran["attrs"]["mesh.job.outcome"] == "done" and ran["attrs"]["mesh.job.owner"] == info_g["peer_id"]
        ask = next(s for s in receiver.named("mesh.ask") if s["parent"] == ran["id"])
        assert ask["attrs"]["mesh.answered_by"] == info_a["peer_id"]
    finally:
        if g is not None:
            g.stop()
        a.stop()


def test_without_an_endpoint_nothing_is_exported_and_no_context_is_sent(tmp_path, receiver, monkeypatch):
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    from mesh import tracing

    span = tracing.child("mesh.ask", None)
    assert not span.is_recording() and tracing.inject(span) is None  # nothing rides on the RPC call
    a = PeerProcess(tmp_path / "quiet", "--name", "quiet", "--threads", "1")
    try:
        a.wait_ready()
        r = run_mesh("ask", "--max-tokens", "4", "Say hi.", data_dir=a.data_dir)
        assert r.returncode == 0, r.stderr
    finally:
        a.stop()
    assert receiver.spans == [] and "tracing:" not in a.log()
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None
