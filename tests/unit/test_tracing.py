"""mesh.tracing's pure parts: what a caller's trace context may be, and nothing sent when
tracing is off."""

from __future__ import annotations

import pytest

from mesh import tracing

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_good_traceparent_is_the_parent():
    ctx = tracing.extract({"traceparent": GOOD, "tracestate": "k=v"})
    assert ctx is not None
    span = tracing.child("x", ctx)
    assert format(span.get_span_context().trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("carrier", [
    None, "00-abc", 42, {}, {"traceparent": 7}, {"traceparent": "garbage"},
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},  # an all-zero trace id
    {"traceparent": GOOD + "x" * 600},  # too long
    {"tracestate": "k=v"},
])
def test_anything_else_is_no_parent_and_never_an_error(carrier):
    assert tracing.extract(carrier) is None


def test_off_by_default_spans_do_not_record_and_nothing_is_injected(monkeypatch):
    for var in tracing.ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not tracing.enabled_by_env()
    span = tracing.child("mesh.ask", None)
    assert not span.is_recording() and tracing.inject(span) is None and tracing.inject(None) is None
    tracing.end(span, error=RuntimeError("x"), attributes={"a": 1})  # harmless


def test_the_endpoint_variables_turn_it_on_unless_the_sdk_is_disabled():
    assert tracing.enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.enabled_by_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not tracing.enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
