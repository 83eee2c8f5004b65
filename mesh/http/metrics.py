"""Prometheus metrics of one peer (``prometheus_client``), served at ``GET /metrics``.

Each peer owns a ``CollectorRegistry`` of its own (never the process-global one), so
several peers in one process (tests, an embedded peer beside a CLI) keep apart.

Two kinds of values:

- Facts about prompts are recorded once, where every prompt passes: the Router hands
  the event stream of each ``ask`` to ``PeerMetrics.watch``, whichever way the prompt
  came in (RPC ``ask``, the HTTP API, the job runner). ``watch`` counts the outcome,
  latency, time to first token, tokens, confidence and escalations, and keeps a
  ``RequestRecord`` in the recent-requests buffer (``mesh.http.recent``) for the dashboard.
- Values that already live elsewhere (members by state, backend queue, routing choices,
  circuit breakers, gossip and RPC counters, envelope rejections, jobs by state) are
  read when scraped by ``PeerCollector``, never copied.

Where a prompt came in (``entry``): the caller passes it to ``Router.ask(entry=...)``;
when it does not, the ``ENTRY`` context variable says (the HTTP server sets it to
"http" for its requests), else "rpc".
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from mesh import __version__
from mesh.http.recent import ENTRIES, OUTCOMES, RecentRequests, RequestRecord, preview
from mesh.http.timeline import Timeline
from mesh.rpc.server import Final

if TYPE_CHECKING:
    from mesh.inference.backend import GenerationRequest
    from mesh.peer import Peer

ENTRY: contextvars.ContextVar[str] = contextvars.ContextVar("mesh_entry", default="rpc")


@contextlib.contextmanager
def entered(entry: str) -> Iterator[None]:
    """Within this block (and in tasks created in it), prompts count as entering at ``entry``."""
    token = ENTRY.set(entry)
    try:
        yield
    finally:
        ENTRY.reset(token)


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MEMBER_STATES = ("alive", "suspect", "dead", "left")
ESCALATION_REASONS = ("low_confidence", "no_answer", "other")  # mesh.http.recent.escalation_reason
ESCALATION_TARGETS = ("mesh", "cloud")


class PeerMetrics:
    """The registry, the per-prompt instruments and the recent-requests buffer of one
    peer. ``attach(peer)`` adds the scrape-time collector once the peer is built."""

    def __init__(
        self, *, recent: int = 100, clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic, process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry()
        self.recent = RecentRequests(recent)
        self.timeline = Timeline()  # the dashboard's charts: the last minutes in buckets
        self.started = clock()  # when this peer began counting (its start, near enough)
        # plain totals for the dashboard: requests, each outcome, tokens, escalated
        self.totals: dict[str, int] = dict.fromkeys(("requests", *OUTCOMES, "tokens", "escalated"), 0)
        self._clock = clock
        self._monotonic = monotonic
        r = self.registry
        self.requests = Counter("mesh_requests", "Prompts entered at this peer, by entry point and outcome",
                                ["entry", "outcome"], registry=r)
        self.latency = Histogram("mesh_request_duration_seconds",
                                 "Time from a prompt entering this peer to its final answer (or error)",
                                 ["entry"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("mesh_time_to_first_token_seconds",
                              "Time from a prompt entering this peer to the first token of text",
                              ["entry"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("mesh_tokens_generated", "Completion tokens of the answers kept, by model",
                              ["model"], registry=r)
        self.prompt_tokens = Counter("mesh_prompt_tokens", "Prompt tokens of the answers kept, by model",
                                     ["model"], registry=r)
        self.confidence = Histogram("mesh_answer_confidence", "Confidence of the answers kept",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.escalations = Counter("mesh_escalations", "Rungs taken after the first, by why and where to",
                                   ["reason", "to"], registry=r)
        # Every label pair starts at zero, so rates, error ratios and alerts
        # (contrib/prometheus/alerts.yml) see 0 rather than no series before the first one.
        for entry in ENTRIES:
            for outcome in OUTCOMES:
                self.requests.labels(entry, outcome)
        for reason in ESCALATION_REASONS:
            for to in ESCALATION_TARGETS:
                self.escalations.labels(reason, to)
        if process:
            ProcessCollector(registry=r)

    def attach(self, peer: "Peer") -> None:
        self.registry.register(PeerCollector(peer, clock=self._clock))

    # -- one prompt ---------------------------------------------------------------------

    async def watch(
        self, events: AsyncIterator[Any], gen: "GenerationRequest", *, entry: str | None = None,
    ) -> AsyncIterator[Any]:
        """Pass ``events`` (Router.ask's stream) through, recording the prompt once: at
        its Final (before handing it on, so a caller that stops right after still counts
        as ok), or at the error or cancellation that ended it."""
        entry = entry or ENTRY.get()
        started, t0 = self._clock(), self._monotonic()
        ttft: float | None = None
        done = False

        def record(final: dict | None, error: BaseException | None) -> None:
            rec = RequestRecord.from_outcome(
                time=started, entry=entry, prompt=preview(gen.messages), latency_s=self._monotonic() - t0,
                ttft_s=ttft, final=final, error=error,
            )
            self.observe(rec, final)

        try:
            async for ev in events:
                if isinstance(ev, Final):
                    done = True
                    record(ev.data, None)
                elif ttft is None and isinstance(ev, dict) and ev.get("t"):
                    ttft = self._monotonic() - t0
                yield ev
        except BaseException as e:
            if not done:
                done = True
                record(None, e)
            raise
        finally:
            await events.aclose()
            if not done:
                record(None, None)  # closed by the caller before the final

    def observe(self, rec: RequestRecord, final: dict | None = None) -> None:
        self.totals["requests"] += 1
        self.totals[rec.outcome] = self.totals.get(rec.outcome, 0) + 1
        self.totals["tokens"] += rec.tokens
        self.totals["escalated"] += int(rec.escalated)
        self.requests.labels(rec.entry, rec.outcome).inc()
        self.latency.labels(rec.entry).observe(rec.latency_s)
        if rec.ttft_s is not None:
            self.ttft.labels(rec.entry).observe(rec.ttft_s)
        if rec.outcome == "ok":
            model = rec.model or "?"
            self.tokens.labels(model).inc(rec.tokens)
            pt = (final or {}).get("prompt_tokens")
            if isinstance(pt, int) and not isinstance(pt, bool):
                self.prompt_tokens.labels(model).inc(pt)
            if rec.confidence is not None:
                self.confidence.observe(rec.confidence)
            for reason, to in rec.escalations():
                self.escalations.labels(reason, to).inc()
        self.recent.add(rec)
        self.timeline.add(rec)


ENGINE_STATES = ("ready", "starting", "restarting", "failed", "off")


class PeerCollector(Collector):
    """Reads, at scrape time, what the peer's parts already count."""

    def __init__(self, peer: "Peer", *, clock: Callable[[], float] = time.time) -> None:
        self.peer = peer
        self._clock = clock

    def collect(self):
        p = self.peer
        yield from self._info(p)
        if p._backend is not None:
            yield from self._backend(p)
        if p.membership_service is not None:
            yield from self._members(p)
            yield from self._gossip(p.membership_service.swim.stats)
        if p.router is not None:
            yield from self._routing(p)
        if p.server is not None:
            yield from self._rpc(p.server)
        if getattr(p, "verifier", None) is not None:
            yield from self._identity(p)
        if p.jobs is not None:
            yield from self._jobs(p.jobs.counts())
        if p.model_service is not None:
            yield from self._models(p.model_counts, p.bulk)

    def _info(self, p):
        info = InfoMetricFamily("mesh_peer", "This peer: id, name, model, version")
        model = p._backend.capabilities.model if p._backend is not None else ""
        info.add_metric([], {"peer_id": p.identity.peer_id_text if p.identity else "", "name": p.config.name or "",
                             "model": model, "version": __version__})
        yield info

    def _backend(self, p):
        caps, load = p.backend.capabilities, p.backend.load()
        g = GaugeMetricFamily("mesh_backend_requests", "Generations on this peer's backend, running or waiting",
                              labels=["state"])
        g.add_metric(["running"], load.running)
        g.add_metric(["waiting"], load.waiting)
        yield g
        yield GaugeMetricFamily("mesh_backend_parallel", "Generations this backend runs at once", value=caps.parallel)
        yield GaugeMetricFamily("mesh_backend_queue_limit", "Requests this backend queues before refusing busy",
                                value=caps.queue_limit)
        status = p.backend.status()
        st = GaugeMetricFamily("mesh_engine_state", "This peer's engine: 1 for the state it is in",
                               labels=["state"])
        for name in ENGINE_STATES:
            st.add_metric([name], 1 if status.state == name else 0)
        yield st
        yield CounterMetricFamily("mesh_engine_restarts", "Times the engine process was restarted after it died",
                                  value=status.restarts)
        cache = status.session_cache
        if cache:
            c = CounterMetricFamily("mesh_session_cache", "This engine's prompt cache per session: restored (hit), "
                                    "not helpful (miss), dropped for room (eviction)", labels=["event"])
            for event, key in (("hit", "hits"), ("miss", "misses"), ("eviction", "evictions")):
                c.add_metric([event], cache.get(key, 0))
            yield c
            yield GaugeMetricFamily("mesh_session_cache_bytes", "RAM held by this engine's session prompt cache",
                                    value=cache.get("bytes", 0))

    def _members(self, p):
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for m in p.membership_service.view():
            counts[m.state] = counts.get(m.state, 0) + 1
        g = GaugeMetricFamily("mesh_members", "Members of the mesh in this peer's view (itself included), by state",
                              labels=["state"])
        for state, n in counts.items():
            g.add_metric([state], n)
        yield g

    def _gossip(self, stats):
        msgs = CounterMetricFamily("mesh_gossip_messages", "Gossip messages, by direction and type",
                                   labels=["direction", "type"])
        for direction, counts in (("sent", stats.sent), ("received", stats.received)):
            for kind, n in sorted(counts.items()):
                msgs.add_metric([direction, kind], n)
        yield msgs
        b = CounterMetricFamily("mesh_gossip_bytes", "Gossip bytes, by direction", labels=["direction"])
        b.add_metric(["sent"], stats.bytes_sent)
        b.add_metric(["received"], stats.bytes_received)
        yield b
        rej = CounterMetricFamily("mesh_gossip_rejected", "Gossip messages refused, by reason", labels=["reason"])
        for reason, n in sorted(stats.rejected.items()):
            rej.add_metric([str(reason)], n)
        yield rej
        ev = CounterMetricFamily("mesh_gossip_events", "SWIM decisions (suspected, declared_dead, refuted, ...)",
                                 labels=["event"])
        for event, n in sorted(stats.events.items()):
            ev.add_metric([event], n)
        yield ev

    def _routing(self, p):
        router = p.router
        names = {m.peer_id: m.name for m in p.membership_service.view()} \
            if p.membership_service is not None else {}
        c = CounterMetricFamily("mesh_routing_choices", "Attempts this peer's router sent to each peer",
                                labels=["peer", "name"])
        for peer_id, n in sorted(router.choices.items()):
            c.add_metric([peer_id, names.get(peer_id, "")], n)
        yield c
        states = dict.fromkeys(("closed", "open", "half-open"), 0)
        for state in router.breakers.states(now=self._clock()).values():
            states[str(state)] = states.get(str(state), 0) + 1
        g = GaugeMetricFamily("mesh_circuit_breakers", "Per-peer circuit breakers this router holds, by state",
                              labels=["state"])
        for state, n in states.items():
            g.add_metric([state], n)
        yield g

    def _rpc(self, server):
        s = server.stats
        yield GaugeMetricFamily("mesh_rpc_in_flight", "RPC calls being served now", value=server.in_flight)
        calls = CounterMetricFamily("mesh_rpc_calls", "RPC calls served, by result", labels=["result"])
        for result, n in (("started", s.calls_started), ("ok", s.calls_ok), ("failed", s.calls_failed),
                          ("cancelled", s.calls_cancelled), ("refused_busy", s.refused_busy),
                          ("refused_rate_limited", s.refused_rate), ("refused_connections", s.refused_connections),
                          ("refusal_notices_suppressed", s.notices_suppressed)):
            calls.add_metric([result], n)
        yield calls
        casts = CounterMetricFamily("mesh_rpc_casts", "One-way RPC messages (gossip), by result", labels=["result"])
        casts.add_metric(["handled"], s.casts_handled)
        casts.add_metric(["dropped"], s.casts_dropped)
        casts.add_metric(["rate_limited"], s.casts_rate_limited)
        yield casts
        err = CounterMetricFamily("mesh_rpc_errors", "RPC calls that failed, by error code", labels=["code"])
        for code, n in sorted(s.by_error.items()):
            err.add_metric([str(code)], n)
        yield err
        rej = CounterMetricFamily("mesh_rpc_rejections", "Frames refused before any handler ran, by reason",
                                  labels=["reason"])
        for reason, n in server.codec.rejections.snapshot().items():
            rej.add_metric([reason], n)
        yield rej
        yield CounterMetricFamily("mesh_rpc_handshakes_refused", "CurveZMQ handshakes refused: the client's key is "
                                  "a revoked member's transport key", value=server.handshakes_refused)

    def _identity(self, p):
        v = p.verifier
        ev = CounterMetricFamily(
            "mesh_cache_evictions", "Entries pushed out of a bounded cache (nonce: replay window; certificate: "
            "verified certificates; peer_key: peers whose key this peer vouches for)", labels=["cache"])
        ev.add_metric(["nonce"], p.server.codec.replay.evictions if p.server is not None else 0)
        ev.add_metric(["certificate"], v.cache_evictions)
        ev.add_metric(["peer_key"], v.peer_evictions)
        yield ev
        yield GaugeMetricFamily("mesh_revocations", "Authority-signed revocations this peer holds and enforces",
                                value=len(p.revocations))
        yield CounterMetricFamily("mesh_key_rotations", "Times this peer rotated its keys (mesh rotate) since it "
                                  "started", value=p.rotations)
        cert = p.certificate
        yield GaugeMetricFamily("mesh_certificate_expiry_seconds", "When this peer's certificate expires (Unix time)",
                                value=cert.expires_at)

    def _models(self, counts: dict[str, int], bulk):
        served = CounterMetricFamily("mesh_model_pieces_served", "Model pieces this peer sent to pullers, by path "
                                     "(bulk: the AES-GCM piece stream; rpc: models.piece)", labels=["path"])
        by_bulk = counts.get("bulk_pieces_served", 0)
        served.add_metric(["bulk"], by_bulk)
        served.add_metric(["rpc"], counts.get("pieces_served", 0) - by_bulk)
        yield served
        yield CounterMetricFamily("mesh_model_bytes_served", "Bytes of model pieces this peer sent",
                                  value=counts.get("bytes_served", 0))
        pulls = CounterMetricFamily("mesh_model_pulls", "Model pulls this peer ran, by result", labels=["result"])
        pulls.add_metric(["ok"], counts.get("pulls_ok", 0))
        pulls.add_metric(["failed"], counts.get("pulls_failed", 0))
        yield pulls
        yield CounterMetricFamily("mesh_model_bad_pieces", "Pulled pieces that failed their SHA-256 (the sender was "
                                  "not asked again for that model)", value=counts.get("bad_pieces", 0))
        yield CounterMetricFamily("mesh_model_manifests_refused", "Manifests refused: forged, malformed, or not "
                                  "matching the other holders'", value=counts.get("manifests_refused", 0))
        yield CounterMetricFamily("mesh_model_bulk_refused", "Bulk piece stream connections ended for breaking its "
                                  "rules (bad ticket, tag, frame; too many streams)", value=counts.get("bulk_refused", 0))
        if bulk is not None:
            yield GaugeMetricFamily("mesh_model_bulk_streams", "Bulk piece streams open to pullers now",
                                    value=bulk.sessions())

    def _jobs(self, counts: dict[str, int]):
        from mesh.jobs import JobState

        states = {s.value for s in JobState}
        g = GaugeMetricFamily("mesh_jobs", "Durable jobs in this peer's store, by state", labels=["state"])
        for state, n in counts.items():
            if state in states:
                g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("mesh_jobs_undelivered", "Finished jobs whose owner has not been told the outcome",
                                value=counts.get("undelivered", 0))
        yield GaugeMetricFamily("mesh_jobs_handed_over", "Jobs owned here that another peer is running",
                                value=counts.get("handed_over", 0))
