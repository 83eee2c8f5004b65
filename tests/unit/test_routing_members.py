"""Reading candidates from the membership view: members whose gossiped meta failed its
checks (``mesh.gossip.view``) are skipped and counted by reason, never a crash.

Entries are built as wire dicts and read with ``MemberView.from_wire``, the way a meta
arrives from another member."""

from __future__ import annotations

import copy
import math
import random

import pytest
from test_routing_builders import cand, member, model_meta

from mesh.gossip.view import BAD_ENTRY, BadMeta, MemberView
from mesh.inference import capabilities
from mesh.routing import candidates_from_members
from mesh.routing import members as M
from mesh.testing import ScriptedBackend


def read(view, **kw):
    kw.setdefault("rtts", {})
    kw.setdefault("self_id", "zz")
    return candidates_from_members([MemberView.from_wire(e) for e in view], **kw)


def test_reads_the_meta_a_real_peer_gossips():
    meta = capabilities.snapshot(ScriptedBackend(model="smol", tokens_per_s=42.0, parallel=2, queue_limit=5)).to_wire()
    entry = member("pa") | {"meta": meta}
    [c] = read([entry], rtts={"pa": 0.004})
    assert (c.peer_id, c.name, c.model, c.tokens_per_s, c.parallel, c.queue_limit) == (
        "pa", "host-pa", "smol", 42.0, 2, 5)
    assert (c.running, c.waiting, c.rtt_s, c.is_local, c.status) == (0, 0, 0.004, False, "alive")
    assert c.on_battery is (meta["hw"]["on_battery"] is True)


def test_self_is_local_with_zero_rtt_and_unknown_rtt_is_none():
    got = read([member("pa", is_self=True), member("pb"), member("pc")], rtts={"pa": 9.0, "pb": 0.01, "pc": math.nan},
               self_id="pa")
    by = {c.peer_id: c for c in got}
    assert by["pa"].is_local and by["pa"].rtt_s == 0.0
    assert not by["pb"].is_local and by["pb"].rtt_s == 0.01
    assert by["pc"].rtt_s is None  # a NaN measurement is no measurement


def test_one_candidate_per_model_with_declared_tiers():
    meta_models = [model_meta("small", tier=1), model_meta("big", parameters=7_000_000_000), model_meta("small")]
    entry = member("pa", models=meta_models)
    entry["meta"]["tier"] = 3  # the peer's default tier for models that declare none
    got = read([entry])
    assert [(c.model, c.tier, c.parameters) for c in got] == [("small", 1, 135_000_000), ("big", 3, 7_000_000_000)]


def test_suspect_members_are_candidates_dead_and_left_are_not_live():
    got = read([member("pa", state="suspect"), member("pb", state="dead"), member("pc", state="left"), member("pd")])
    assert sorted((c.peer_id, c.status) for c in got) == [("pa", "suspect"), ("pd", "alive")]
    assert got.not_live == 2 and got.skipped == {}


def _broken(mutate):
    entry = member("pb")
    mutate(entry)
    return entry


BROKEN = [
    (M.NO_META, lambda e: e.update(meta=None)),
    (M.NO_META, lambda e: e.update(meta={})),
    (M.NO_META, lambda e: e.update(meta=["hw"])),
    (M.BAD_HW, lambda e: e["meta"].pop("hw")),
    (M.BAD_HW, lambda e: e["meta"]["hw"].update(on_battery="yes")),
    (M.BAD_LOAD, lambda e: e["meta"].pop("load")),
    (M.BAD_LOAD, lambda e: e["meta"]["load"].update(parallel=0)),
    (M.BAD_LOAD, lambda e: e["meta"]["load"].update(running=-1)),
    (M.BAD_LOAD, lambda e: e["meta"]["load"].update(waiting=1.5)),
    (M.BAD_LOAD, lambda e: e["meta"]["load"].update(queue_limit=True)),
    (M.BAD_LOAD, lambda e: e["meta"]["load"].update(running=10**9)),
    (M.BAD_MODELS, lambda e: e["meta"].update(models=None)),
    (M.NO_MODELS, lambda e: e["meta"].update(models=[])),  # engine not ready, or --no-model
    (M.BAD_MODELS, lambda e: e["meta"].update(models=[model_meta(f"m{i}") for i in range(33)])),
    (M.BAD_MODELS, lambda e: e["meta"].update(models=["m"])),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(name=7)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].pop("context_length")),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(context_length=0)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(parameters=True)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(tokens_per_s=math.nan)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(tokens_per_s=math.inf)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(tokens_per_s="fast")),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(tokens_per_s=-1.0)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"][0].update(tier="gold")),
    (M.BAD_MODELS, lambda e: e["meta"].update(tier=-1)),
    (M.BAD_MODELS, lambda e: e["meta"]["models"].append(model_meta("other", context=-5))),  # one bad model: all out
]


@pytest.mark.parametrize("reason,mutate", BROKEN)
def test_a_malformed_member_is_skipped_and_counted(reason, mutate):
    got = read([member("pa"), _broken(mutate), member("pc")])
    assert [c.peer_id for c in got] == ["pa", "pc"]
    assert got.skipped == {reason: 1} and got.skipped_total == 1


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("peer_id"),
    lambda e: e.update(peer_id=b"raw"),
    lambda e: e.update(peer_id="x" * 500),
    lambda e: e.update(name=""),
    lambda e: e.update(state="zombie"),
    lambda e: e.update(state=None),
    lambda e: e.update(addresses="tcp://x:1"),
    lambda e: e.update(self="yes"),
])
def test_a_malformed_entry_is_refused_with_a_typed_error(mutate):
    with pytest.raises(BadMeta) as err:
        read([_broken(mutate)])
    assert err.value.reason == BAD_ENTRY


def test_duplicates_are_skipped():
    got = read([member("pa"), member("pa", running=5)])
    assert got == [cand("pa", rtt=None)]
    assert got.skipped == {M.DUPLICATE: 1}


KEYS = ["hw", "models", "load", "name", "tier", "running", "parallel", "context_length", "tokens_per_s",
        "on_battery", "waiting", "queue_limit"]


def _garbage(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 3 else 7)
    if pick == 7:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 8:
        return {k: _garbage(rng, depth + 1) for k in rng.sample(KEYS, 4)}
    return [None, True, -3, 2**70, math.nan, "x" * rng.randrange(300), b"\xff"][pick]


def test_random_garbage_never_raises():
    rng = random.Random(7)
    view = []
    for i in range(300):
        e = member(f"p{chr(97 + i % 26)}{chr(97 + i // 26)}")
        target = rng.choice([e, e["meta"], e["meta"]["hw"], e["meta"]["load"], e["meta"]["models"][0]])
        key = rng.choice(list(target))
        target[key] = _garbage(rng)
        view.append(copy.deepcopy(e))
    views = []
    for e in view:
        try:
            views.append(MemberView.from_wire(e))
        except BadMeta as bad:  # the entry itself (not its meta) was hit: typed, never anything else
            assert bad.reason == "bad entry"
    got = candidates_from_members(views, rtts={}, self_id="zz")
    assert len(got) + got.skipped_total + got.not_live == len(views) > 150
    for c in got:  # what came through is sane
        assert c.parallel >= 1 and c.context_length >= 1 and math.isfinite(c.tokens_per_s)
