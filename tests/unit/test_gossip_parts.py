"""The small parts of the SWIM core: timing formulas, suspicion, local health, the news
queue, the member table, sync digests, the config presets."""

from __future__ import annotations

import math
import random

import pytest

from mesh.gossip import GossipConfig
from mesh.gossip import sync as sync_rules
from mesh.gossip.broadcast import BroadcastQueue
from mesh.gossip.member import Member, Status
from mesh.gossip.messages import DigestEntry
from mesh.gossip.suspicion import Suspicion
from mesh.gossip.table import MemberTable
from mesh.gossip.timing import (
    Awareness,
    remaining_suspicion_s,
    retransmit_limit,
    suspicion_min_s,
    sync_interval_s,
)
from mesh.testing.network import SimAuthority


@pytest.fixture
def auth():
    return SimAuthority(random.Random(2))


# --- timing ---------------------------------------------------------------------------


def test_suspicion_min_scales_with_log10_n_and_never_below_mult():
    assert suspicion_min_s(1.5, 1, 1.0) == 1.5
    assert suspicion_min_s(1.5, 10, 1.0) == 1.5
    assert suspicion_min_s(1.5, 100, 2.0) == pytest.approx(6.0)
    assert suspicion_min_s(2, 1000, 1.0) == pytest.approx(6.0)


def test_remaining_suspicion_shrinks_from_max_to_min_with_confirmations():
    got = [remaining_suspicion_s(n, 3, 0.0, 2.0, 12.0) for n in range(5)]
    assert got[0] == 12.0 and got[3] == got[4] == 2.0
    assert got == sorted(got, reverse=True)
    assert got[1] == pytest.approx(12.0 - math.log(2) / math.log(4) * 10.0)
    assert remaining_suspicion_s(0, 3, 5.0, 2.0, 12.0) == 7.0  # elapsed time counts
    assert remaining_suspicion_s(0, 0, 0.0, 2.0, 12.0) == 2.0  # no confirmations expected: min


def test_retransmit_limit_and_sync_scaling():
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 256, 1000)] == [4, 4, 8, 8, 12, 16]
    assert sync_interval_s(30.0, 32) == 30.0
    assert sync_interval_s(30.0, 64) == 60.0
    assert sync_interval_s(30.0, 1000) == 180.0


def test_suspicion_counts_independent_confirmations_once():
    s = Suspicion(incarnation=1, start=10.0, first_from=b"a", k=2, min_s=2.0, max_s=12.0)
    assert s.deadline == 22.0
    assert not s.confirm(b"a")  # the original suspecter is not independent
    assert s.confirm(b"b") and not s.confirm(b"b")
    mid = s.deadline
    assert 12.0 < mid < 22.0
    assert s.confirm(b"c") and s.deadline == 12.0
    assert not s.confirm(b"d")  # k reached: no more news to rebroadcast


def test_awareness_is_bounded_and_scales_timeouts():
    a = Awareness(4)
    a.apply(-1)
    assert a.score == 0 and a.scale(0.5) == 0.5
    a.apply(10)
    assert a.score == 3 and a.scale(0.5) == 2.0


# --- news queue ---------------------------------------------------------------------------


def test_queue_keeps_one_item_per_member_the_newest():
    q = BroadcastQueue()
    for v in range(100):  # a load refresh every second for 100 s, never sent
        q.put(b"m1", b"v%d" % v, urgent=False)
    assert len(q) == 1
    assert q.take(1000, 5, max_items=10) == [b"v99"]


def test_queue_sends_each_item_limit_times_then_drops_it():
    q = BroadcastQueue()
    q.put(b"a", b"A", urgent=True)
    sent = [q.take(1000, 3, max_items=10) for _ in range(5)]
    assert sent == [[b"A"], [b"A"], [b"A"], [], []]
    assert len(q) == 0


def test_queue_urgent_first_then_least_sent_then_newest():
    q = BroadcastQueue()
    q.put(b"meta1", b"m1", urgent=False)
    q.put(b"meta2", b"m2", urgent=False)
    q.put(b"dead", b"D", urgent=True)
    assert q.take(1000, 3, max_items=1) == [b"D"]
    assert q.take(1000, 3, max_items=1) == [b"D"]  # urgent stays ahead until sent out
    assert q.take(1000, 3, max_items=3) == [b"D", b"m2", b"m1"]
    assert b"dead" not in q  # sent 3 times: done
    q.put(b"meta1", b"m1'", urgent=False)  # replaced: transmits reset, now least sent
    assert q.take(1000, 3, max_items=1) == [b"m1'"]


def test_queue_urgency_survives_replacement_by_a_meta_refresh():
    q = BroadcastQueue()
    q.put(b"x", b"joined", urgent=True)
    q.put(b"x", b"joined+load", urgent=False)
    q.put(b"other", b"o", urgent=False)  # newer, but only a meta refresh
    assert q.take(1000, 9, max_items=1) == [b"joined+load"]


def test_queue_respects_the_byte_budget_and_lets_an_oversized_item_go_alone():
    q = BroadcastQueue()
    q.put(b"big", b"B" * 500, urgent=True)
    q.put(b"s1", b"s" * 60, urgent=False)
    q.put(b"s2", b"t" * 60, urgent=False)
    assert q.take(100, 1, max_items=10) == [b"B" * 500]
    assert b"big" not in q
    got = q.take(100, 1, max_items=10)
    assert sum(map(len, got)) <= 100 and len(got) == 1
    q.drop(b"s1")
    q.drop(b"s2")
    assert len(q) == 0


# --- member table -------------------------------------------------------------------------


def _member(auth, status=Status.ALIVE, since=0.0):
    r = auth.record(auth.new_identity())
    return Member(r, status, 0, since)


def test_table_live_index_follows_status(auth):
    t = MemberTable(max_members=10)
    ms = [_member(auth) for _ in range(5)]
    for x in ms:
        t.put(x)
    assert t.n_live == 5
    t.put(Member(ms[0].record, Status.DEAD, 0, 1.0))
    t.put(Member(ms[1].record, Status.SUSPECT, 0, 1.0))
    assert t.n_live == 4 and ms[0].peer_id not in t.live_ids and ms[1].peer_id in t.live_ids
    assert t.dead_ids() == [ms[0].peer_id]
    rng = random.Random(1)
    for _ in range(50):
        got = t.sample_live(rng, 2, exclude=(ms[2].peer_id,))
        assert len(got) == 2 and len(set(got)) == 2 and ms[2].peer_id not in got and ms[0].peer_id not in got
    assert sorted(t.sample_live(rng, 10)) == sorted(t.live_ids)


def test_table_bound_evicts_only_the_departed(auth):
    t = MemberTable(max_members=3)
    old_dead = _member(auth, Status.DEAD, since=1.0)
    newer_left = _member(auth, Status.LEFT, since=5.0)
    t.put(old_dead)
    t.put(newer_left)
    t.put(_member(auth))
    assert not t.has_room()
    assert t.eviction_candidate() is old_dead
    t.remove(old_dead.peer_id, tombstone_until=100.0)
    t.remove(newer_left.peer_id, tombstone_until=100.0)
    t.put(_member(auth))
    t.put(_member(auth))
    assert not t.has_room() and t.eviction_candidate() is None  # all live: refuse newcomers


def test_tombstones_remember_the_incarnation_until_they_expire(auth):
    t = MemberTable(max_members=2)
    ids = []
    for _ in range(3):
        x = _member(auth, Status.DEAD)
        t.put(x)
        t.remove(x.peer_id, tombstone_until=10.0)
        ids.append(x.peer_id)
    assert t.tombstone(ids[0]) is None  # capped at max_members: the oldest went first
    assert t.tombstone(ids[2]) == 0
    t.expire_tombstones(10.0)
    assert t.tombstone(ids[2]) is None


# --- sync digests ---------------------------------------------------------------------------


def test_sync_delta_sends_what_the_other_side_lacks(auth):
    pid = auth.new_identity()
    r5 = auth.record(pid, incarnation=1, version=5)
    x = Member(r5, Status.ALIVE, 1, 0.0)
    same = DigestEntry(pid, Status.ALIVE, 1, r5.key)
    assert sync_rules.newer(x, same) is None
    assert sync_rules.newer(x, None) == sync_rules.MEMBERSHIP
    assert sync_rules.newer(x, DigestEntry(pid, Status.ALIVE, 1, (1, False, 4))) == sync_rules.META
    assert sync_rules.newer(x, DigestEntry(pid, Status.ALIVE, 0, (0, False, 9))) == sync_rules.MEMBERSHIP
    assert sync_rules.newer(x, DigestEntry(pid, Status.SUSPECT, 1, r5.key)) is None
    dead = Member(r5, Status.DEAD, 1, 0.0)
    assert sync_rules.newer(dead, same) == sync_rules.MEMBERSHIP
    assert sync_rules.newer(dead, None) is None  # nobody needs to learn of the departed


def test_sync_delta_caps_meta_only_news_but_not_membership(auth):
    members, digest = [], []
    for i in range(40):
        pid = auth.new_identity()
        r = auth.record(pid, version=10, meta={"load": "x" * 100})
        members.append(Member(r, Status.ALIVE, 0, 0.0))
        if i < 30:  # the other side holds an older version of 30 of them, and lacks 10
            digest.append(DigestEntry(pid, Status.ALIVE, 0, (0, False, 9)))
    record_bytes = members[0].record.size + sync_rules.ENTRY_OVERHEAD
    out = sync_rules.delta(members, digest, rng=random.Random(1), max_bytes=1 << 20, max_meta_bytes=5 * record_bytes)
    lacking = {x.peer_id for x in members[30:]}
    assert lacking <= {e.record.peer_id for e in out}
    assert len(out) == 10 + 5


# --- config -----------------------------------------------------------------------------------


def test_presets_and_validation():
    lan, fast = GossipConfig.lan(), GossipConfig.for_tests()
    assert (lan.probe_interval_s, lan.probe_timeout_s, lan.indirect_checks) == (0.7, 0.35, 3)
    assert fast.probe_interval_s == pytest.approx(0.1) and fast.suspicion_mult == lan.suspicion_mult
    assert lan.with_(gossip_fanout=4).gossip_fanout == 4
    with pytest.raises(ValueError):
        GossipConfig(probe_timeout_s=2.0)
    with pytest.raises(ValueError):
        GossipConfig(max_sync_bytes=10, max_message_bytes=5)


def test_direct_probe_acks_measure_round_trips():
    from mesh.testing.network import SimNetwork

    # one-way latency 10 ms (+ up to 1 ms jitter): a direct probe's round trip is ~20 ms
    net = SimNetwork(seed=3, latency_s=0.010, jitter_s=0.001)
    ids = net.start(4)
    assert net.run_until(net.converged, timeout_s=5.0)
    net.run(3.0)
    rtts = [rtt for p in ids for rtt in net.peers[p].swim.rtts.values()]
    assert len(rtts) >= 4 and all(0.018 <= r <= 0.03 for r in rtts), rtts
