"""Fit (context, pins, minimums, busy) and scoring (expected seconds to a complete answer)."""

from __future__ import annotations

import math

import pytest
from test_routing_builders import cand

from mesh.errors import InvalidRequest
from mesh.routing import RouteRequest, RoutingConfig, expected_s, is_busy, is_last_resort, score, unfit_reason
from mesh.routing import fit as F

CFG = RoutingConfig.for_tests()
REQ = RouteRequest(prompt_tokens=100, max_tokens=100)


def s(c, req=REQ, reservations=None, cfg=CFG):
    return score(c, req, reservations=reservations or {}, cfg=cfg)


# --- fit ------------------------------------------------------------------------------


def test_context_must_hold_prompt_plus_answer():
    req = RouteRequest(prompt_tokens=1000, max_tokens=1048)
    assert unfit_reason(cand(context=2048), req) is None
    assert unfit_reason(cand(context=2047), req) == F.CONTEXT


def test_pins_and_minimums():
    assert unfit_reason(cand("pa"), RouteRequest(1, 1, pinned_peer="pb")) == F.PEER_PIN
    assert unfit_reason(cand("pb"), RouteRequest(1, 1, pinned_peer="pb")) is None
    assert unfit_reason(cand(model="Smol"), RouteRequest(1, 1, pinned_model="gemma")) == F.MODEL_PIN
    assert unfit_reason(cand(model="Smol"), RouteRequest(1, 1, pinned_model="smol")) is None  # case-insensitive
    assert unfit_reason(cand(model="Smol"), RouteRequest(1, 1, pinned_model="gemma"), pins=False) is None
    assert unfit_reason(cand(tier=None), RouteRequest(1, 1, min_tier=1)) == F.TIER
    assert unfit_reason(cand(tier=2), RouteRequest(1, 1, min_tier=2)) is None
    assert unfit_reason(cand(parameters=10), RouteRequest(1, 1, min_parameters=11)) == F.PARAMETERS
    assert unfit_reason(cand(status="dead"), REQ) == F.NOT_LIVE
    assert unfit_reason(cand(status="suspect"), REQ) is None


def test_busy_when_the_queue_with_our_reservations_is_full():
    c = cand("pa", running=1, waiting=7, parallel=1, queue_limit=8)  # capacity 9
    assert not is_busy(c, {})
    assert is_busy(c, {"pa": 1})
    assert not is_busy(c, {"pb": 5})
    assert is_busy(cand(running=2, waiting=7, parallel=1, queue_limit=8), {})
    assert not is_busy(c, {"pa": -4})  # a negative count is a shell bug, not free capacity


@pytest.mark.parametrize("bad", [
    {"prompt_tokens": -1}, {"max_tokens": 0}, {"prompt_tokens": 1.5}, {"threshold": 1.5}, {"pinned_peer": "P-1"},
    {"session_id": "s" * 129}, {"min_tier": -1}, {"pinned_model": ""},
])
def test_route_request_refuses_bad_fields(bad):
    with pytest.raises(InvalidRequest):
        RouteRequest(**({"prompt_tokens": 1, "max_tokens": 1} | bad))


def test_route_request_from_a_generation_request():
    from mesh.inference import GenerationRequest

    g = GenerationRequest.from_prompt("x" * 400, system="be brief", max_tokens=64)
    r = RouteRequest.for_generation(g, session_id="s1")
    assert r.max_tokens == 64 and r.session_id == "s1" and r.prompt_tokens >= 100 + 2


# --- score ----------------------------------------------------------------------------


def test_score_is_expected_seconds_by_the_documented_formula():
    cfg = RoutingConfig(queued_request_tokens=300)
    c = cand(tps=50.0, running=1, waiting=3, parallel=2, rtt=0.02)
    # ahead 4 (+1 reserved) / parallel 2 * 300/50 s  +  200/50 s  +  0.02 s
    assert s(c, reservations={"pa": 1}, cfg=cfg) == pytest.approx(5 / 2 * 6.0 + 4.0 + 0.02)


def test_scoring_orders_by_expected_time():
    fast, slow = cand("pa", tps=100), cand("pb", tps=25)
    assert s(fast) < s(slow)
    queued_fast = cand("pa", tps=100, waiting=10)
    assert s(queued_fast) > s(slow)  # 10 typical requests ahead outweigh 4x the speed
    assert s(cand(tps=50, waiting=4, parallel=4)) < s(cand(tps=50, waiting=4, parallel=1))
    assert s(cand(rtt=0.5)) - s(cand(rtt=0.0)) == pytest.approx(0.5)
    longer = RouteRequest(prompt_tokens=100, max_tokens=1000)
    assert s(fast, longer) > s(fast)


def test_reservations_count_like_gossiped_load():
    assert s(cand("pa"), reservations={"pa": 3}) == pytest.approx(s(cand("pa", waiting=3)))
    assert s(cand("pa"), reservations={"pb": 3}) == pytest.approx(s(cand("pa")))


def test_unmeasured_speed_is_finite_and_pessimistic():
    unmeasured = s(cand(tps=0.0))
    assert math.isfinite(unmeasured)
    assert unmeasured == pytest.approx(s(cand(tps=CFG.unknown_tokens_per_s)))
    assert unmeasured > s(cand(tps=20.0))


def test_unknown_rtt_uses_the_default_and_local_is_free():
    assert s(cand(rtt=None)) == pytest.approx(s(cand(rtt=CFG.unknown_rtt_s)))
    assert s(cand(local=True)) < s(cand(rtt=0.001))


def test_battery_suspect_and_heavy_load_are_last_resort_with_a_penalty():
    base = cand("pa")
    for c in (cand("pa", battery=True), cand("pa", status="suspect"),
              cand("pa", running=1, waiting=47, parallel=1, queue_limit=63)):  # 48/64 = 0.75 full
        assert is_last_resort(c, reservations={}, cfg=CFG)
        assert s(c) == pytest.approx(expected_s(c, REQ, reservations={}, cfg=CFG) + CFG.last_resort_penalty_s)
    assert not is_last_resort(base, reservations={}, cfg=CFG) and s(base) == expected_s(base, REQ, reservations={},
                                                                                          cfg=CFG)
    almost = cand("pa", running=1, waiting=46, parallel=1, queue_limit=63)
    assert not is_last_resort(almost, reservations={}, cfg=CFG)
    assert is_last_resort(almost, reservations={"pa": 1}, cfg=CFG)  # our in-flight requests count too


def test_config_refuses_nonsense_and_presets_differ_only_in_times():
    with pytest.raises(ValueError):
        RoutingConfig(p2c_pool=1)
    with pytest.raises(ValueError):
        RoutingConfig(breaker_min_samples=30, breaker_window=20)
    lan, fast = RoutingConfig.lan(), RoutingConfig.for_tests()
    assert fast.breaker_open_s < lan.breaker_open_s and fast.breaker_failures == lan.breaker_failures
