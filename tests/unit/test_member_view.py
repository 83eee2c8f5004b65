"""The typed member view (``mesh.gossip.view``): what a meta or a member entry reads back
as, the reason a bad one is refused with, and that nothing but ``BadMeta`` ever escapes."""

from __future__ import annotations

import math
import random

import msgpack
import pytest

from mesh.gossip import view as V
from mesh.gossip.view import BadMeta, EngineInfo, Hardware, LoadInfo, MemberView, ModelInfo, PeerMeta
from mesh.inference import capabilities
from mesh.inference.no_model import NoModel
from mesh.testing import ScriptedBackend

FULL = PeerMeta(
    hw=Hardware(cpu_count=8, ram_total_mb=16000, ram_available_mb=9000, gpu="RTX 4090", on_battery=False),
    models=(ModelInfo(name="smol", parameters=135_000_000, context_length=8192, tokens_per_s=45.5,
                      quantisation="Q8_0"),
            ModelInfo(name="big", parameters=7_000_000_000, context_length=4096, tokens_per_s=9.0, tier=3)),
    load=LoadInfo(running=1, waiting=2, parallel=2, queue_limit=16),
    engine=EngineInfo(state="restarting", reason="SIGSEGV", restarts=2),
    tier=1, renew=True, rotating=True,
)


def test_a_meta_survives_msgpack_and_reads_back_equal():
    wire = msgpack.unpackb(msgpack.packb(FULL.to_wire()))
    assert PeerMeta.from_wire(wire) == FULL
    plain = PeerMeta()
    assert "renew" not in plain.to_wire() and PeerMeta.from_wire(plain.to_wire()) == plain


def test_what_a_real_peer_gossips_reads_back_equal():
    meta = capabilities.snapshot(ScriptedBackend(model="m1", tokens_per_s=42.0), renew=True)
    assert PeerMeta.from_wire(msgpack.unpackb(msgpack.packb(meta.to_wire()))) == meta
    assert meta.renew and meta.model_names() == ["m1"]


def test_a_peer_without_a_model_still_says_it_holds_the_authority():
    # the entry peer of a mesh is often started with --no-model and holds the authority key:
    # if its meta did not read back, nobody could renew or rotate through it
    meta = capabilities.snapshot(NoModel(), renew=True)
    back = PeerMeta.from_wire(msgpack.unpackb(msgpack.packb(meta.to_wire())))
    assert back == meta and back.renew and back.models == () and back.load.parallel == 0


def test_a_member_view_survives_the_members_answer():
    m = MemberView(peer_id="ab" * 16, name="laptop", state="suspect", incarnation=7,
                   addresses=("tcp://10.0.0.2:7411",), meta=FULL, is_self=False, last_heard_s=1.5, since_s=3.0,
                   transport="k" * 40, revoked=True, replaced_by="cd" * 16)
    assert MemberView.from_wire(msgpack.unpackb(msgpack.packb(m.to_wire()))) == m
    bad = MemberView(peer_id="ab" * 16, name="laptop", state="alive", meta=None, meta_problem=V.BAD_LOAD)
    back = MemberView.from_wire(bad.to_wire())
    assert back.meta is None and back.meta_problem == V.BAD_LOAD  # why it was refused travels with it


@pytest.mark.parametrize("reason,meta", [
    (V.NO_META, None),
    (V.NO_META, {}),
    (V.NO_META, ["hw"]),
    (V.BAD_HW, {"load": {}, "models": []}),
    (V.BAD_HW, {**FULL.to_wire(), "hw": {"on_battery": "yes"}}),
    (V.BAD_HW, {**FULL.to_wire(), "hw": {"cpu_count": 0}}),
    (V.BAD_LOAD, {**FULL.to_wire(), "load": {"running": 0, "waiting": 0, "parallel": 0, "queue_limit": 1}}),
    (V.BAD_MODELS, {**FULL.to_wire(), "models": "smol"}),
    (V.BAD_MODELS, {**FULL.to_wire(), "models": [{"name": "x", "parameters": 1, "context_length": 1,
                                                  "tokens_per_s": math.nan}]}),
    (V.BAD_MODELS, {**FULL.to_wire(), "tier": 10**6}),
    (V.BAD_ENGINE, {**FULL.to_wire(), "engine": "ready"}),
    (V.BAD_ENGINE, {**FULL.to_wire(), "engine": {"state": "ready", "restarts": -1}}),
    (V.BAD_FLAG, {**FULL.to_wire(), "renew": 1}),
])
def test_a_bad_meta_is_refused_for_the_part_that_is_wrong(reason, meta):
    with pytest.raises(BadMeta) as err:
        PeerMeta.from_wire(meta)
    assert err.value.reason == reason
    assert V.read_meta(meta) == (None, reason)


def _garbage(rng: random.Random, depth: int = 0):
    pick = rng.randrange(10 if depth < 3 else 8)
    if pick == 8:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 9:
        keys = ["hw", "models", "load", "engine", "tier", "renew", "name", "running", "parallel", "state",
                "context_length", "tokens_per_s", "on_battery", "cpu_count", "peer_id", "addresses", "meta"]
        return {k: _garbage(rng, depth + 1) for k in rng.sample(keys, 5)}
    return [None, True, -3, 2**70, math.nan, math.inf, "x" * rng.randrange(300), b"\xff"][pick]


def test_random_garbage_raises_only_bad_meta():
    rng = random.Random(11)
    read = refused = 0
    for _ in range(3000):
        wire = FULL.to_wire()
        target = rng.choice([wire, wire["hw"], wire["load"], wire["engine"], wire["models"][0]])
        target[rng.choice(list(target))] = _garbage(rng)
        entry = {**MemberView(peer_id="ab", name="n", state="alive").to_wire(), "meta": wire}
        if rng.random() < 0.3:
            entry[rng.choice(list(entry))] = _garbage(rng)
        try:
            m = MemberView.from_wire(entry)
        except BadMeta as e:  # the entry itself is broken: typed, and said why
            assert e.reason == V.BAD_ENTRY
            refused += 1
            continue
        read += 1
        if m.meta is not None:  # what came through is sane
            assert all(x.context_length >= 1 and math.isfinite(x.tokens_per_s) for x in m.models)
            assert m.meta.load.parallel >= 1 or not m.meta.models
        else:
            assert m.meta_problem in (V.NO_META, V.BAD_HW, V.BAD_LOAD, V.BAD_MODELS, V.BAD_ENGINE, V.BAD_FLAG)
    assert read > 1000 and refused > 100  # both paths were exercised
