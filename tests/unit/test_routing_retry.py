"""retry_plan: bounded retries on other peers with exponential, jittered back-off."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from test_routing_builders import cand

from mesh.routing import RouteDecision, RouteReason, RoutingConfig, backoff_s, retry_plan

CFG = replace(RoutingConfig.for_tests(), max_retries=2, retry_backoff_s=0.1, retry_backoff_max_s=0.3, retry_jitter=0.5)


def decision(n_fallbacks: int) -> RouteDecision:
    return RouteDecision(RouteReason.P2C, chosen=cand("pa"), score=1.0,
                         fallbacks=tuple(cand(p) for p in ("pb", "pc", "pd", "pe")[:n_fallbacks]))


def test_retries_go_to_the_fallbacks_in_order_and_stop_at_the_bound():
    rng = random.Random(1)
    d = decision(4)
    got = [retry_plan(d, k, cfg=CFG, rng=rng)[0] for k in range(6)]
    assert [c.peer_id if c else None for c in got] == [None, "pb", "pc", None, None, None]
    assert retry_plan(d, 3, cfg=CFG, rng=rng) == (None, 0.0)


def test_retries_stop_when_the_fallbacks_run_out_and_a_pin_has_none():
    rng = random.Random(1)
    assert retry_plan(decision(1), 2, cfg=CFG, rng=rng) == (None, 0.0)
    pinned = RouteDecision(RouteReason.PINNED, chosen=cand("pa"), score=1.0)
    assert retry_plan(pinned, 1, cfg=CFG, rng=rng) == (None, 0.0)
    assert retry_plan(decision(4), 1, cfg=replace(CFG, max_retries=0), rng=rng) == (None, 0.0)


def test_backoff_doubles_with_jitter_within_bounds_and_is_capped():
    rng = random.Random(5)
    for k, base in ((1, 0.1), (2, 0.2), (3, 0.3), (40, 0.3), (10**6, 0.3)):
        samples = [backoff_s(k, cfg=CFG, rng=rng) for _ in range(200)]
        assert all(base / 2 <= b <= base for b in samples)
        assert max(samples) - min(samples) > base / 4  # the jitter is real
    exact = replace(CFG, retry_jitter=0.0)
    assert [backoff_s(k, cfg=exact, rng=rng) for k in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_backoff_is_deterministic_under_a_seeded_rng():
    a = [retry_plan(decision(4), k, cfg=CFG, rng=r)[1] for r in [random.Random(9)] for k in (1, 2)]
    b = [retry_plan(decision(4), k, cfg=CFG, rng=r)[1] for r in [random.Random(9)] for k in (1, 2)]
    assert a == b and a[0] < a[1] + 0.1
