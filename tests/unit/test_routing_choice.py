"""choose_route: pins, sticky sessions, power of two choices, reservations, last resort."""

from __future__ import annotations

import random
from collections import Counter

from test_routing_builders import cand

from mesh.routing import BreakerBook, RouteReason, RouteRequest, RoutingConfig, SessionAffinity, choose_route

CFG = RoutingConfig.for_tests()
REQ = RouteRequest(prompt_tokens=100, max_tokens=100)


def choose(cands, req=REQ, *, reservations=None, affinity=None, breakers=None, now=0.0, seed=0, rng=None, cfg=CFG):
    return choose_route(req, cands, reservations=reservations or {}, affinity=affinity, breakers=breakers, now=now,
                        rng=rng or random.Random(seed), cfg=cfg)


def four_equal(**kw):
    return [cand(p, **kw) for p in ("pa", "pb", "pc", "pd")]


# --- no route -------------------------------------------------------------------------


def test_no_fit_model_says_why():
    d = choose([cand("pa", context=512), cand("pb", context=256)], RouteRequest(prompt_tokens=400, max_tokens=200))
    assert d.reason is RouteReason.NO_FIT and not d.ok and d.chosen is None
    assert d.unfit == 2 and "context too short (2)" in d.detail
    assert choose([]).reason is RouteReason.NO_FIT


def test_all_busy_all_open_and_mixed():
    full = {"running": 1, "waiting": 8, "queue_limit": 8}
    d = choose([cand("pa", **full), cand("pb", **full)])
    assert d.reason is RouteReason.ALL_BUSY and d.busy == 2 and not d.reason.routed

    book = BreakerBook(cfg=CFG)
    for _ in range(CFG.breaker_failures):
        book.record_failure("pa", now=0.0)
        book.record_failure("pb", now=0.0)
    d = choose([cand("pa"), cand("pb")], breakers=book)
    assert d.reason is RouteReason.ALL_OPEN and d.open == 2
    d = choose([cand("pa"), cand("pc", **full)], breakers=book)
    assert d.reason is RouteReason.UNAVAILABLE and (d.open, d.busy) == (1, 1)
    # once the cool-down has passed the half-open peer may take a trial
    assert choose([cand("pa"), cand("pc", **full)], breakers=book, now=CFG.breaker_open_s).chosen.peer_id == "pa"


def test_reservations_can_make_a_peer_busy():
    d = choose([cand("pa", queue_limit=2)], reservations={"pa": 3})
    assert d.reason is RouteReason.ALL_BUSY


# --- pins -----------------------------------------------------------------------------


def test_pinned_peer_is_honoured_even_when_worse_and_never_retried_elsewhere():
    cands = [cand("pa", tps=500), cand("pb", tps=5), cand("pc", tps=50)]
    d = choose(cands, RouteRequest(prompt_tokens=10, max_tokens=10, pinned_peer="pb"))
    assert d.reason is RouteReason.PINNED and d.chosen.peer_id == "pb" and d.fallbacks == ()
    d = choose(cands, RouteRequest(prompt_tokens=10, max_tokens=10, pinned_peer="pz"))
    assert d.reason is RouteReason.NO_FIT and "not the pinned peer" in d.detail


def test_pinned_model_restricts_the_choice():
    cands = [cand("pa", model="small", tps=500), cand("pb", model="big", tps=5), cand("pc", model="BIG", tps=10)]
    for seed in range(10):
        d = choose(cands, RouteRequest(prompt_tokens=10, max_tokens=10, pinned_model="big"), seed=seed)
        assert d.chosen.peer_id == "pc" and [f.peer_id for f in d.fallbacks] == ["pb"]


def test_only_candidate():
    d = choose([cand("pa"), cand("pb", context=10)])
    assert d.reason is RouteReason.ONLY and d.chosen.peer_id == "pa" and d.runner_up is None and d.unfit == 1


def test_a_peer_with_two_models_offers_its_best_fit_once():
    cands = [cand("pa", model="slow", tps=10), cand("pa", model="fast", tps=100), cand("pb", tps=20)]
    d = choose(cands)
    assert d.chosen.peer_id == "pa" and d.chosen.model == "fast"
    assert [f.peer_id for f in d.fallbacks] == ["pb"]


# --- power of two choices ----------------------------------------------------------------


def test_p2c_is_deterministic_under_a_seeded_rng():
    cands = [cand(p, tps=t) for p, t in (("pa", 40), ("pb", 50), ("pc", 45), ("pd", 55), ("pe", 60))]

    def run(seed):
        rng = random.Random(seed)
        return [choose(cands, rng=rng).chosen.peer_id for _ in range(50)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_p2c_takes_the_better_of_two_and_never_the_worst_of_the_pool():
    # ranked by score: pe (60 tok/s), pd, pb, pc, pa (40); the pool is the best 4
    cands = [cand(p, tps=t) for p, t in (("pa", 40), ("pb", 50), ("pc", 45), ("pd", 55), ("pe", 60))]
    seen = Counter()
    for seed in range(200):
        d = choose(cands, seed=seed)
        assert d.reason is RouteReason.P2C
        assert d.score < d.runner_up_score  # the chosen one beat the other sampled one
        assert [f.peer_id for f in d.fallbacks] == [p for p in ("pe", "pd", "pb", "pc", "pa") if p != d.chosen.peer_id]
        seen[d.chosen.peer_id] += 1
    assert seen["pa"] == 0 and seen["pc"] == 0  # outside the pool / worst of the pool
    assert seen["pe"] > seen["pd"] > seen["pb"] > 0  # better peers win more often; not always the best


def test_ties_break_by_peer_id():
    for seed in range(30):
        d = choose([cand("pb"), cand("pa")], seed=seed)  # both always sampled; equal scores
        assert d.chosen.peer_id == "pa" and d.runner_up.peer_id == "pb" and d.score == d.runner_up_score


def test_reservations_spread_a_burst_across_equal_peers():
    rng = random.Random(11)
    reservations: Counter[str] = Counter()
    for _ in range(100):  # gossip does not change during the burst; only our reservations do
        d = choose(four_equal(), reservations=reservations, rng=rng)
        reservations[d.chosen.peer_id] += 1
    assert sum(reservations.values()) == 100
    assert max(reservations.values()) <= 40 and min(reservations.values()) >= 15

    # without reservations the same stale view herds: ties go to the lowest id
    rng = random.Random(11)
    herd = Counter(choose(four_equal(), rng=rng).chosen.peer_id for _ in range(100))
    assert max(herd.values()) > 40 and herd["pd"] == 0


# --- last resort --------------------------------------------------------------------------


def test_battery_peer_only_when_the_others_cannot_serve_in_time():
    battery = cand("pz", tps=200, battery=True)  # 4x faster, but on battery
    mains = cand("pa", tps=50)
    for seed in range(30):
        assert choose([battery, mains], seed=seed).chosen.peer_id == "pa"
        assert choose([battery, mains, cand("pb", tps=40)], seed=seed).chosen.peer_id in ("pa", "pb")
    # the others busy / unfit / far too slow: the battery peer serves
    assert choose([battery, cand("pa", running=1, waiting=64)]).chosen.peer_id == "pz"
    assert choose([battery, cand("pa", context=100)]).chosen.peer_id == "pz"
    crawl = cand("pa", tps=2)  # 100 s for this request: worse than 1 s + the 60 s penalty
    assert choose([battery, crawl]).chosen.peer_id == "pz"
    # and it stays a fallback
    assert [f.peer_id for f in choose([battery, mains]).fallbacks] == ["pz"]


def test_one_preferred_peer_among_last_resorts_is_taken_as_best():
    cands = [cand("pa", tps=20)] + [cand(p, tps=200, battery=True) for p in ("pb", "pc", "pd")]
    for seed in range(20):
        d = choose(cands, seed=seed)
        assert d.reason is RouteReason.BEST and d.chosen.peer_id == "pa"


def test_heavily_loaded_peer_only_when_the_others_cannot():
    loaded = cand("pz", tps=500, running=1, waiting=6, queue_limit=8)  # 7/9 of capacity
    idle = cand("pa", tps=50)
    for seed in range(20):
        assert choose([loaded, idle], seed=seed).chosen.peer_id == "pa"
    assert choose([loaded, cand("pa", tps=50, context=10)]).chosen.peer_id == "pz"


def test_last_resort_pool_when_the_best_is_last_resort():
    # every peer on battery: plain p2c among them
    cands = [cand(p, battery=True) for p in ("pa", "pb", "pc")]
    got = {choose(cands, seed=seed).chosen.peer_id for seed in range(30)}
    assert got == {"pa", "pb"}  # equal scores: the lower id of each sampled pair


# --- sticky sessions --------------------------------------------------------------------


def sticky_setup():
    aff = SessionAffinity(max_sessions=8)
    aff.remember("s1", "pb")
    req = RouteRequest(prompt_tokens=100, max_tokens=100, session_id="s1")
    return aff, req


def test_same_session_same_peer_while_healthy():
    aff, req = sticky_setup()
    cands = [cand("pa", tps=100), cand("pb", tps=50), cand("pc", tps=60)]
    for seed in range(20):
        d = choose(cands, req, affinity=aff, seed=seed)
        assert d.reason is RouteReason.STICKY and d.chosen.peer_id == "pb"
        assert d.runner_up.peer_id == "pa" and [f.peer_id for f in d.fallbacks] == ["pa", "pc"]
    # another session, or none, is routed by p2c
    assert choose(cands, RouteRequest(prompt_tokens=100, max_tokens=100, session_id="s2"), affinity=aff).reason \
        is RouteReason.P2C


def test_stickiness_breaks_when_the_peer_becomes_unhealthy():
    aff, req = sticky_setup()
    others = [cand("pa", tps=100), cand("pc", tps=60)]
    unhealthy = {
        "suspect": cand("pb", status="suspect"),
        "busy": cand("pb", running=1, waiting=64),
        "battery": cand("pb", battery=True),
        "unfit": cand("pb", context=150),
        "dead": cand("pb", status="dead"),
    }
    for why, pb in unhealthy.items():
        d = choose(others + [pb], req, affinity=aff)
        assert d.reason is not RouteReason.STICKY and d.chosen.peer_id != "pb", why
    assert choose(others, req, affinity=aff).chosen.peer_id != "pb"  # gone from the view

    book = BreakerBook(cfg=CFG)
    for _ in range(CFG.breaker_failures):
        book.record_failure("pb", now=0.0)
    pb = cand("pb")
    assert choose(others + [pb], req, affinity=aff, breakers=book, now=0.0).chosen.peer_id != "pb"
    # half-open is not healthy enough to stick to (it may still be sampled by p2c)
    d = choose(others + [pb], req, affinity=aff, breakers=book, now=CFG.breaker_open_s)
    assert d.reason is not RouteReason.STICKY
    book.record_success("pb", now=CFG.breaker_open_s)  # the trial passed: closed
    assert choose(others + [pb], req, affinity=aff, breakers=book, now=CFG.breaker_open_s).reason is RouteReason.STICKY


def test_forget_on_failure_routes_the_session_afresh():
    aff, req = sticky_setup()
    cands = [cand("pa", tps=100), cand("pb", tps=50)]
    assert choose(cands, req, affinity=aff).chosen.peer_id == "pb"
    aff.forget_peer("pb")
    d = choose(cands, req, affinity=aff)
    assert d.reason is RouteReason.P2C and d.chosen.peer_id == "pa"


def test_choice_does_not_touch_its_inputs():
    aff, req = sticky_setup()
    aff.remember("s0", "pa")
    book = BreakerBook(cfg=CFG)
    reservations = {"pa": 1}
    cands = four_equal()
    choose(cands, req, affinity=aff, breakers=book, reservations=reservations)
    assert reservations == {"pa": 1} and len(book) == 0 and cands == four_equal()
    aff.remember("s2", "pc")
    for _ in range(7):
        aff.remember(f"x{_}", "pd")
    assert aff.get("s1") is None  # s1 was least recently *remembered*: a get in choose did not refresh it


def test_decision_scores_are_the_score_function():
    from mesh.routing import score

    reservations = {"pa": 2, "pc": 40}
    cands = [cand("pa", tps=30), cand("pb", tps=80, battery=True), cand("pc", tps=90, waiting=10), cand("pd", tps=0)]
    for seed in range(10):
        d = choose(cands, reservations=reservations, seed=seed)
        for c, sc in ((d.chosen, d.score), (d.runner_up, d.runner_up_score)):
            assert sc == score(c, REQ, reservations=reservations, cfg=CFG)
