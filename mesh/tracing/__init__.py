"""OpenTelemetry traces across peers (issue 17).

A prompt entered at one peer is one trace over every peer it touches: the entry peer's
``mesh.ask`` span, a ``mesh.step`` span per rung of the escalation ladder, a
``mesh.attempt`` span per peer tried, and a ``mesh.generate`` span where the answer is
generated (this peer or another), with the answer's model, tokens, time to first token
and confidence. Between peers the W3C trace context (``traceparent``, ``tracestate``)
travels in the RPC call's arguments (``trace``), so the answering peer's span is a child
of the caller's attempt; an HTTP client's ``traceparent`` header does the same at the
entry.

Off by default, at no measurable cost: without ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) nothing of OpenTelemetry's SDK is imported, the
API's tracer hands out non-recording spans, and no ``trace`` argument is sent. With it,
``setup_from_env`` installs the SDK's tracer provider with a batching OTLP/HTTP
(protobuf) exporter; the standard variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...) apply.

Spans are started with explicit parents (never made current): the router's events are
async generators, and a context set inside one would leak into its consumer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("mesh.tracing")

TRACER = trace.get_tracer("mesh")
_PROPAGATOR = TraceContextTextMapPropagator()
MAX_HEADER_CHARS = 512  # a traceparent is 55 characters; tracestate at most 32 members (W3C)
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_provider = None

__all__ = ["Span", "SpanKind", "TRACER", "child", "end", "extract", "inject", "setup_from_env", "shutdown"]


def enabled_by_env(env: Mapping[str, str] = os.environ) -> bool:
    return any(env.get(v) for v in ENDPOINT_VARS) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


def setup_from_env(*, service_name: str, attributes: Mapping[str, Any] | None = None) -> bool:
    """Export this process's spans over OTLP/HTTP when the standard variables ask for it.
    True if tracing is on."""
    global _provider
    if _provider is not None or not enabled_by_env():
        return _provider is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name,
                                **(attributes or {})})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing: spans exported over OTLP to %s",
             os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return True


def shutdown() -> None:
    """Send what is batched (at a clean stop)."""
    if _provider is not None:
        _provider.shutdown()


def child(name: str, parent: Span | Context | None, *, kind: SpanKind = SpanKind.INTERNAL,
          attributes: Mapping[str, Any] | None = None) -> Span:
    """A span under ``parent`` (a span, an extracted context, or None: a new trace).
    Not made current."""
    ctx = trace.set_span_in_context(parent) if isinstance(parent, Span) else parent
    return TRACER.start_span(name, context=ctx, kind=kind, attributes=dict(attributes or {}))


def end(span: Span, *, error: BaseException | str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
    if attributes:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)[:300]))
        if isinstance(error, BaseException):
            span.record_exception(error)
    span.end()


def inject(span: Span | None) -> dict[str, str] | None:
    """The W3C trace context of ``span`` for an RPC call's ``trace`` argument; None when
    tracing is off (nothing is sent)."""
    if span is None or not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None


def extract(carrier: Any) -> Context | None:
    """The parent context a caller sent (``trace`` argument, or HTTP headers); None for
    nothing or anything malformed (a bad trace context never fails a request)."""
    if not isinstance(carrier, Mapping):
        return None
    clean = {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate") and isinstance(v, str)
             and len(v) <= MAX_HEADER_CHARS}
    if "traceparent" not in clean:
        return None
    ctx = _PROPAGATOR.extract(clean)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def generation_attributes(final: Mapping[str, Any] | None) -> dict[str, Any]:
    """A generation span's attributes from an answer's final (its wire dict)."""
    if not final:
        return {}
    return {"mesh.model": final.get("model"), "mesh.completion_tokens": final.get("completion_tokens"),
            "mesh.prompt_tokens": final.get("prompt_tokens"), "mesh.time_to_first_token_s":
            final.get("time_to_first_token_s"), "mesh.confidence": final.get("confidence"),
            "mesh.tokens_per_s": final.get("tokens_per_s"), "mesh.finish_reason": final.get("finish_reason")}
