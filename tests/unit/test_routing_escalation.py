"""The escalation ladder: best fit -> stronger model in the mesh -> cloud -> stop."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from test_routing_builders import cand

from mesh.routing import Attempt, RouteRequest, RoutingConfig, StepKind, choose_route, next_step

CFG = replace(RoutingConfig.for_tests(), cloud_enabled=True)
NO_CLOUD = replace(CFG, cloud_enabled=False)
REQ = RouteRequest(prompt_tokens=100, max_tokens=100)

SMALL = cand("pa", model="small", parameters=135_000_000, tps=100)
MID = cand("pb", model="mid", parameters=270_000_000, tps=50)
BIG = cand("pc", model="big", parameters=1_000_000_000, tps=10)
MESH = [SMALL, MID, BIG]


def test_the_first_step_routes_the_request_as_given():
    step = next_step([], None, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.ROUTE and step.request == REQ and step.keep is None


def test_a_confident_answer_stops():
    step = next_step([Attempt.of(SMALL, confidence=None, reason="best fit")], 0.7, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.STOP and step.keep == 0 and "confident" in step.reason


def test_low_confidence_goes_to_the_strongest_untried_model_then_the_cloud_then_stops():
    path = [Attempt.of(SMALL, confidence=0.4, reason="best fit")]
    step = next_step(path, 0.4, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.ROUTE and step.model == "big"
    assert step.request.pinned_model == "big" and step.request.pinned_peer is None
    assert "0.40 below 0.70" in step.reason

    path.append(Attempt.of(BIG, confidence=0.6, reason=step.reason))
    step = next_step(path, 0.6, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.CLOUD and step.keep == 1

    path.append(Attempt.from_cloud("gpt", confidence=0.5, reason=step.reason))
    step = next_step(path, 0.5, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.STOP and step.keep == 1 and "cloud was tried" in step.reason


def test_stronger_means_more_parameters_or_a_higher_declared_tier_and_never_weaker():
    tiered = cand("pd", model="tiny-but-tuned", parameters=100_000_000, tier=2)
    step = next_step([Attempt.of(BIG, confidence=0.1, reason="best fit")], 0.1, REQ, MESH + [tiered], cfg=CFG)
    assert step.model == "tiny-but-tuned"  # tier 2 outranks the untiered billion
    # from the strongest model nothing in the mesh is stronger: on to the cloud, not down to "mid"
    step = next_step([Attempt.of(BIG, confidence=0.1, reason="best fit")], 0.1, REQ, MESH, cfg=CFG)
    assert step.kind is StepKind.CLOUD


def test_a_stronger_model_must_fit_the_request_and_pins_do_not_bind_escalation():
    short_big = replace(BIG, context_length=150)
    req = replace(REQ, pinned_model="small", pinned_peer="pa")
    step = next_step([Attempt.of(SMALL, confidence=0.2, reason="best fit")], 0.2, req, [SMALL, MID, short_big], cfg=CFG)
    assert step.kind is StepKind.ROUTE and step.model == "mid" and step.request.pinned_peer is None
    minimum = replace(REQ, min_parameters=500_000_000)
    step = next_step([Attempt.of(SMALL, confidence=0.2, reason="best fit")], 0.2, minimum, MESH, cfg=CFG)
    assert step.model == "big"


def test_local_only_never_yields_the_cloud():
    req = replace(REQ, local_only=True)
    step = next_step([Attempt.of(BIG, confidence=0.1, reason="best fit")], 0.1, req, MESH, cfg=CFG)
    assert step.kind is StepKind.STOP and "local-only" in step.reason and step.keep == 0
    # and for every path shape and confidence the ladder can see
    attempts = [Attempt.of(SMALL, confidence=0.1, reason="r"), Attempt.of(BIG, confidence=None, reason="r"),
                Attempt.no_route(reason="r"), Attempt.of(MID, confidence=0.69, reason="r")]
    for n in range(4):
        for path in itertools.permutations(attempts, n):
            for conf in (None, 0.0, 0.5, 0.69):
                for cands in (MESH, [], [SMALL]):
                    assert next_step(path, conf, req, cands, cfg=CFG).kind is not StepKind.CLOUD


def test_no_escalate_keeps_the_first_answer():
    req = replace(REQ, no_escalate=True)
    step = next_step([Attempt.of(SMALL, confidence=0.1, reason="best fit")], 0.1, req, MESH, cfg=CFG)
    assert step.kind is StepKind.STOP and step.keep == 0 and "no escalation" in step.reason
    # with no answer at all there is nothing to keep: the ladder still looks for one
    step = next_step([Attempt.no_route(reason="best fit")], None, req, MESH, cfg=CFG)
    assert step.kind is StepKind.CLOUD


def test_no_route_in_the_mesh_goes_straight_to_the_cloud_or_stops():
    path = [Attempt.no_route(reason="best fit")]
    assert next_step(path, None, REQ, MESH, cfg=CFG).kind is StepKind.CLOUD
    step = next_step(path, None, REQ, MESH, cfg=NO_CLOUD)
    assert step.kind is StepKind.STOP and step.keep is None and "no cloud configured" in step.reason


def test_a_failed_step_escalates_and_the_best_answer_is_kept():
    path = [Attempt.of(SMALL, confidence=0.5, reason="best fit"), Attempt.of(BIG, confidence=None, reason="up")]
    step = next_step(path, None, REQ, MESH, cfg=NO_CLOUD)
    assert step.kind is StepKind.STOP and step.keep == 0


def test_the_ladder_is_bounded():
    cfg = replace(CFG, max_steps=2)
    path = [Attempt.of(SMALL, confidence=0.1, reason="a"), Attempt.of(MID, confidence=0.2, reason="b")]
    step = next_step(path, 0.2, REQ, MESH, cfg=cfg)
    assert step.kind is StepKind.STOP and step.keep == 1


def test_the_whole_ladder_with_choose_route():
    """Drive the ladder as the Router will: route, answer, record, ask again."""
    confidence = {"small": 0.3, "mid": 0.5, "big": 0.65, "cloud-model": 0.9}
    rng = random.Random(0)

    def run(req, cfg):
        path = []
        conf = None
        while True:
            step = next_step(path, conf, req, MESH, cfg=cfg)
            if step.kind is StepKind.STOP:
                return path, step
            if step.kind is StepKind.CLOUD:
                conf = confidence["cloud-model"]
                path.append(Attempt.from_cloud("cloud-model", confidence=conf, reason=step.reason))
                continue
            d = choose_route(step.request, MESH, reservations={}, affinity=None, breakers=None, now=0.0, rng=rng,
                             cfg=cfg)
            conf = confidence[d.chosen.model]
            path.append(Attempt.of(d.chosen, confidence=conf, reason=step.reason))

    for _ in range(10):  # the first rung is p2c over small and mid; the rest is fixed
        path, stop = run(REQ, CFG)
        assert path[0].model in ("small", "mid")
        assert [(a.model, a.peer_id) for a in path[1:]] == [("big", "pc"), ("cloud-model", None)]
        assert path[stop.keep].model == "cloud-model" and "confident" in stop.reason

        path, stop = run(replace(REQ, local_only=True), CFG)
        assert [a.model for a in path[1:]] == ["big"] and not any(a.cloud for a in path)
        assert path[stop.keep].model == "big"

        path, stop = run(replace(REQ, no_escalate=True), CFG)
        assert len(path) == 1 and stop.keep == 0
