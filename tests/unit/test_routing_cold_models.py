"""Models on a peer's disk but not loaded (issue 15): gossip says so per model, and the
router counts the load into a candidate's expected time, so a warm peer wins unless the
cold one is much better."""

from __future__ import annotations

import random

import pytest
from test_routing_builders import cand

from mesh.gossip.view import BadMeta, ModelInfo
from mesh.routing import RouteRequest, RoutingConfig, choose_route, expected_s

CFG = RoutingConfig.for_tests()
REQ = RouteRequest(prompt_tokens=100, max_tokens=100)


def test_a_cold_model_round_trips_and_a_loaded_one_says_nothing_new():
    cold = ModelInfo("gemma", 268_000_000, 8192, 0.0, "Q4_K_M", loaded=False, load_s=2.5)
    wire = cold.to_wire()
    assert wire["cold"] is True and wire["load_s"] == 2.5
    assert ModelInfo.from_wire(wire) == cold
    warm = ModelInfo("smol", 135_000_000, 2048, 45.0)
    assert "cold" not in warm.to_wire() and "load_s" not in warm.to_wire()  # as older peers send it
    assert ModelInfo.from_wire(warm.to_wire()).loaded


@pytest.mark.parametrize("bad", [{"cold": "yes"}, {"cold": True, "load_s": -1}, {"cold": True, "load_s": 1e9}])
def test_bad_cold_fields_are_refused(bad):
    wire = {**ModelInfo("m", 1, 2048, 1.0).to_wire(), **bad}
    with pytest.raises(BadMeta):
        ModelInfo.from_wire(wire)


def test_the_load_is_counted_into_the_expected_time():
    warm, cold = cand("pa"), cand("pb", load_s=4.0)
    assert expected_s(cold, REQ, reservations={}, cfg=CFG) == pytest.approx(
        expected_s(warm, REQ, reservations={}, cfg=CFG) + 4.0)


def test_a_warm_peer_wins_unless_the_cold_one_is_much_better():
    def chosen(cands):
        return choose_route(REQ, cands, reservations={}, affinity=None, breakers=None, now=0.0,
                            rng=random.Random(0), cfg=CFG).chosen.peer_id

    assert chosen([cand("warm", tps=40), cand("cold", tps=50, load_s=3.0)]) == "warm"
    # the warm peer is busy with a long queue: the cold load is worth it
    assert chosen([cand("warm", tps=40, running=1, waiting=10, queue_limit=64),
                   cand("cold", tps=50, load_s=3.0)]) == "cold"
