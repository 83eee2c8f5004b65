"""Metrics without a model: the recent-requests buffer, records from finals and errors,
``PeerMetrics.watch`` over scripted event streams (outcomes, time to first token, the
entry point), the scrape-time collector on a loopback mesh of scripted peers, and the
access rule for ops pages."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh.client import Client
from mesh.errors import BackendBusy, InvalidRequest, NoAnswer
from mesh.http.guard import KEY_CHECK, refusal
from mesh.http.metrics import PeerMetrics, entered
from mesh.http.recent import RecentRequests, RequestRecord, outcome_of, preview
from mesh.inference.backend import GenerationRequest, Message
from mesh.rpc.server import Final
from mesh.testing import ScriptedBackend
from mesh.testing.clock import ManualClock
from support.loopmesh import run, start_mesh, wait_for


def record(n: int = 0, **kw) -> RequestRecord:
    return RequestRecord(**{"time": 1000.0 + n, "entry": "rpc", "prompt": f"p{n}", "outcome": "ok",
                            "latency_s": 0.1, **kw})


def gen(text: str = "hello there") -> GenerationRequest:
    return GenerationRequest(messages=(Message("system", "be brief"), Message("user", text)))


def final(**kw) -> dict:
    return {"peer": "A", "model": "small", "confidence": 0.8, "completion_tokens": 5, "prompt_tokens": 7,
            "escalated": False, "stopped": "confident", "text": "hi",
            "path": [{"peer": "A", "model": "small", "confidence": 0.8, "reason": "best fit", "cloud": False,
                      "answered": True, "text": "hi"}], **kw}


def samples(registry) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- the buffer and the records -----------------------------------------------------------


def test_recent_requests_is_bounded_newest_first_and_numbered():
    buf = RecentRequests(maxlen=3)
    for i in range(5):
        assert buf.add(record(i)) == i + 1
    assert len(buf) == 3 and buf.last_seq == 5
    snap = buf.snapshot()
    assert [r["seq"] for r in snap] == [5, 4, 3] and snap[0]["prompt"] == "p4"
    assert [r["seq"] for r in buf.snapshot(2)] == [5, 4]
    assert [r["seq"] for r in buf.snapshot(after=3)] == [5, 4]
    assert buf.snapshot(after=5) == []
    with pytest.raises(ValueError):
        RecentRequests(0)


def test_preview_takes_the_last_user_message_on_one_short_line():
    long = "word " * 100
    msgs = (Message("user", "first"), Message("assistant", "x"), Message("user", f"  two\nlines {long}"))
    p = preview(msgs)
    assert p.startswith("two lines word") and len(p) == 80 and p.endswith("\u2026")
    assert preview((Message("system", "s"),)) == ""


def test_record_from_a_final_keeps_who_answered_and_classifies_escalations():
    path = [
        {"peer": "A", "model": "small", "confidence": 0.3, "reason": "best fit", "cloud": False, "answered": True},
        {"peer": "B", "model": "big", "confidence": None, "reason": "confidence 0.30 below 0.70: stronger model big",
         "cloud": False, "answered": False},
        {"peer": "cloud", "model": "gpt", "confidence": 0.9, "reason": "no answer: the cloud", "cloud": True,
         "answered": True, "text": "secret answer"},
    ]
    rec = RequestRecord.from_outcome(time=1.0, entry="http", prompt="q", latency_s=2.0, ttft_s=0.5,
                                     final=final(peer="cloud", model="gpt", confidence=0.9, path=path, escalated=True))
    assert rec.outcome == "ok" and rec.peer == "cloud" and rec.escalated and rec.tokens == 5
    assert rec.escalations() == [("low_confidence", "mesh"), ("no_answer", "cloud")]
    assert "text" not in rec.to_dict()["path"][2]  # answers are not kept, only who gave them


def test_outcomes_of_errors():
    assert outcome_of(NoAnswer("x")) == "no_answer"
    assert outcome_of(BackendBusy("x")) == "busy"
    assert outcome_of(InvalidRequest("x")) == "invalid"
    assert outcome_of(asyncio.CancelledError()) == "cancelled"
    assert outcome_of(RuntimeError("x")) == "error"
    rec = RequestRecord.from_outcome(time=1.0, entry="rpc", prompt="q", latency_s=1.0, ttft_s=None,
                                     error=BackendBusy("every peer is busy"))
    assert rec.outcome == "busy" and rec.error == "every peer is busy" and rec.peer is None


# -- watch: one prompt counted once ------------------------------------------------------


class Ticks:
    """A monotonic clock that moves 0.25 s per read."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 0.25
        return self.t


async def script(*events, error=None):
    for ev in events:
        yield ev
    if error is not None:
        raise error


def drain(metrics, events, **kw):
    async def main():
        out = []
        async for ev in metrics.watch(events, gen(), **kw):
            out.append(ev)
        return out
    return asyncio.run(main())


def test_watch_counts_an_answer_once_with_latency_ttft_tokens_and_escalations():
    m = PeerMetrics(clock=ManualClock(), monotonic=Ticks(), process=False)
    path = final()["path"] + [{"peer": "B", "model": "big", "confidence": 0.9, "cloud": False, "answered": True,
                               "reason": "confidence 0.30 below 0.70: stronger model big"}]
    evs = drain(m, script({"step": {"n": 0}}, {"t": "hi"}, {"t": "!"}, Final(final(path=path, escalated=True))),
                entry="job")
    assert len(evs) == 4
    s = samples(m.registry)
    assert s[("mesh_requests_total", (("entry", "job"), ("outcome", "ok")))] == 1
    assert s[("mesh_request_duration_seconds_count", (("entry", "job"),))] == 1
    assert s[("mesh_time_to_first_token_seconds_count", (("entry", "job"),))] == 1
    assert s[("mesh_time_to_first_token_seconds_sum", (("entry", "job"),))] == 0.25  # one read after the start
    assert s[("mesh_tokens_generated_total", (("model", "small"),))] == 5
    assert s[("mesh_escalations_total", (("reason", "low_confidence"), ("to", "mesh")))] == 1
    assert m.totals["requests"] == 1 and m.totals["ok"] == 1 and m.totals["escalated"] == 1
    (rec,) = m.recent.snapshot()
    assert rec["entry"] == "job" and rec["prompt"] == "hello there" and rec["outcome"] == "ok"


def test_watch_counts_errors_and_callers_that_leave():
    m = PeerMetrics(process=False)
    with pytest.raises(BackendBusy):
        drain(m, script({"step": {}}, error=BackendBusy("busy")))

    async def leave_early():
        events = m.watch(script({"t": "a"}, {"t": "b"}, Final(final())), gen())
        async for _ in events:
            break
        await events.aclose()

    async def leave_after_final():
        events = m.watch(script({"t": "a"}, Final(final())), gen())
        async for ev in events:
            if isinstance(ev, Final):
                break
        await events.aclose()

    asyncio.run(leave_early())
    asyncio.run(leave_after_final())
    s = samples(m.registry)
    assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "busy")))] == 1
    assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "cancelled")))] == 1
    assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))] == 1
    assert m.totals["requests"] == 3


def test_every_outcome_and_escalation_series_starts_at_zero():
    """Error ratios and escalation alerts (contrib/prometheus/alerts.yml) divide by and
    compare these series: they exist, at zero, before the first prompt."""
    s = samples(PeerMetrics(process=False).registry)
    for entry in ("rpc", "http", "job"):
        for outcome in ("ok", "no_answer", "busy", "invalid", "error", "cancelled"):
            assert s[("mesh_requests_total", (("entry", entry), ("outcome", outcome)))] == 0
    for reason in ("low_confidence", "no_answer", "other"):
        for to in ("mesh", "cloud"):
            assert s[("mesh_escalations_total", (("reason", reason), ("to", to)))] == 0


def test_entry_comes_from_the_context_when_not_given():
    m = PeerMetrics(process=False)
    with entered("http"):
        drain(m, script(Final(final())))
    drain(m, script(Final(final())))
    s = samples(m.registry)
    assert s[("mesh_requests_total", (("entry", "http"), ("outcome", "ok")))] == 1
    assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))] == 1


# -- the collector on real (scripted) peers, and /metrics over HTTP --------------------------


def test_collector_reads_members_routing_rpc_and_jobs_of_a_loopback_mesh(tmp_path):
    async def main():
        backends = [ScriptedBackend(["w", "x"], model="m", parameters=100) for _ in range(2)]
        peers = await start_mesh(tmp_path, backends)
        try:
            await wait_for(lambda: all(
                sum(m.state == "alive" for m in p.membership_service.view()) == 2 for p in peers))
            c = Client(peers[0].data.root)
            for _ in range(3):
                await c.aask("hi", max_tokens=2)
            await c.aclose()
            s = samples(peers[0].metrics.registry)
            assert s[("mesh_members", (("state", "alive"),))] == 2
            assert s[("mesh_members", (("state", "dead"),))] == 0
            assert s[("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))] == 3
            chosen = sum(v for (name, _), v in s.items() if name == "mesh_routing_choices_total")
            assert chosen == 3
            assert s[("mesh_rpc_calls_total", (("result", "ok"),))] >= 3
            assert sum(v for (name, _), v in s.items() if name == "mesh_gossip_messages_total") > 0
            assert s[("mesh_backend_requests", (("state", "running"),))] == 0
            assert ("mesh_jobs", (("state", "queued"),)) in s
            info = [k for k in s if k[0] == "mesh_peer_info"]
            assert dict(info[0][1])["name"] == "p0" and dict(info[0][1])["model"] == "m"
            # the other peer generated, but prompts are counted only where they entered
            s1 = samples(peers[1].metrics.registry)
            assert s1.get(("mesh_requests_total", (("entry", "rpc"), ("outcome", "ok")))) == 0
        finally:
            for p in peers:
                await p.stop()
    run(main())


def test_ops_endpoints_over_http_on_a_scripted_peer(tmp_path):
    async def main():
        from mesh.peer import Peer
        from support.loopmesh import config

        p = Peer(config(tmp_path, "solo", http_port=0), backend=ScriptedBackend(["a", "b"], model="m"))
        await p.start()
        try:
            def get(path):
                with urllib.request.urlopen(p.http_url + path, timeout=10) as r:
                    return r.status, r.headers["Content-Type"], r.read().decode()

            def post(path, body):
                req = urllib.request.Request(p.http_url + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.read().decode()

            status, _, body = await asyncio.to_thread(get, "/readyz")
            assert status == 200 and json.loads(body) == {"status": "ready"}
            stream = await asyncio.to_thread(post, "/api/ask", {"prompt": "hi", "max_tokens": 2})
            assert "event: t" in stream and "event: final" in stream
            status, ctype, body = await asyncio.to_thread(get, "/metrics")
            assert ctype.startswith("text/plain") and "version=" in ctype
            s = {(x.name, tuple(sorted(x.labels.items()))): x.value
                 for f in text_string_to_metric_families(body) for x in f.samples}
            assert s[("mesh_requests_total", (("entry", "http"), ("outcome", "ok")))] == 1
            snap = json.loads((await asyncio.to_thread(get, "/api/mesh"))[2])
            assert snap["members"][0]["self"] and snap["requests"][0]["entry"] == "http"
            assert snap["totals"]["ok"] == 1
        finally:
            await p.stop()
        from mesh.http.ops import not_ready_reason

        assert not_ready_reason(p) == "stopping"
    run(main())


def _request(remote: str, *, app, headers=None):
    from unittest import mock

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (remote, 40000) if name == "peername" else default
    return make_mocked_request("GET", "/metrics", headers=headers, app=app, transport=transport)


def test_ops_pages_need_a_key_off_loopback():
    local = _request("127.0.0.1", app={})
    assert refusal(local, "127.0.0.1") is None and refusal(local, "::1") is None  # auto: loopback bind
    assert refusal(local, "127.0.0.1", "no").status == 403  # keys always asked, none configured
    assert refusal(local, "0.0.0.0").status == 403  # no API keys configured: refused outright
    assert refusal(local, "0.0.0.0", "yes") is None  # local callers keyless on any bind
    app = {KEY_CHECK: lambda token: token == "k1"}
    bad = _request("10.0.0.9", headers={"Authorization": "Bearer nope"}, app=app)
    good = _request("10.0.0.9", headers={"Authorization": "Bearer k1"}, app=app)
    assert refusal(bad, "10.0.0.5").status == 401
    assert refusal(bad, "10.0.0.5", "yes").status == 401  # a remote caller is never keyless
    assert refusal(good, "10.0.0.5") is None


def test_prompts_run_by_the_job_runner_count_as_entry_job(tmp_path):
    async def main():
        from mesh.peer import Peer
        from support.loopmesh import config

        p = Peer(config(tmp_path, "solo"), backend=ScriptedBackend(["a", "b"], model="m"))
        await p.start()
        try:
            p.jobs.submit({"messages": [{"role": "user", "content": "later"}], "max_tokens": 2},
                          owner=p.identity.peer_id_text)
            p.job_runner.wake()
            await wait_for(lambda: p.metrics.totals["requests"] == 1)
            s = samples(p.metrics.registry)
            assert s[("mesh_requests_total", (("entry", "job"), ("outcome", "ok")))] == 1
            assert p.metrics.recent.snapshot()[0]["prompt"] == "later"
        finally:
            await p.stop()
    run(main())


def test_metrics_and_api_need_an_api_key_when_bound_beyond_loopback(tmp_path):
    async def main():
        from mesh.http.apikeys import ApiKeyStore
        from mesh.peer import Peer
        from support.loopmesh import config

        # bound to every interface, reached here on loopback only
        p = Peer(config(tmp_path, "open", http_port=0, http_host="0.0.0.0"), backend=ScriptedBackend(["a"]))
        await p.start()
        try:
            def status(path, key=None):
                req = urllib.request.Request(p.http_url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return r.status
                except urllib.error.HTTPError as e:
                    return e.code

            assert await asyncio.to_thread(status, "/healthz") == 200
            assert await asyncio.to_thread(status, "/readyz") == 200
            assert await asyncio.to_thread(status, "/metrics") == 401
            assert await asyncio.to_thread(status, "/api/mesh") == 401
            _, key = ApiKeyStore(p.data.api_keys).create("prometheus")
            assert await asyncio.to_thread(status, "/metrics", "mesh-wrong") == 401
            assert await asyncio.to_thread(status, "/metrics", key) == 200
            assert await asyncio.to_thread(status, "/api/mesh", key) == 200
        finally:
            await p.stop()
    run(main())
