"""Load dissemination rules (mesh.gossip.load) and their wire, with an injected clock.

Swim-level tests reuse ``Lab`` from test_gossip_swim (effects delivered at once, no sockets)."""

from __future__ import annotations

import pytest
from test_gossip_swim import Lab, sends

from mesh.gossip import GossipConfig, GossipError, GossipReason, wire
from mesh.gossip import messages as m
from mesh.gossip.load import MAX_LOAD_COUNT, Load, LoadBook, Verdict
from mesh.gossip.view import LoadInfo, PeerMeta, needs_resign, with_load

ME, A, B, C = (bytes([i]) * 16 for i in range(4))
NOW = 1000.0
MEMBERS = {A, B, C}.__contains__
LIMITS = {"max_bytes": 1 << 20, "max_news": 64, "max_entries": 16}


def book(**kw) -> LoadBook:
    return LoadBook(ME, now=NOW, future_s=kw.get("future_s", 30.0), max_relay=kw.get("max_relay", 256))


def test_newer_replaces_older_and_older_never_overwrites_newer():
    b = book()
    assert b.learn(A, Load(5000, 1, 0), NOW, is_member=MEMBERS) is Verdict.NEWER
    assert b.learn(A, Load(4000, 2, 2), NOW, is_member=MEMBERS) is Verdict.OLD  # a late datagram
    assert b.learn(A, Load(5000, 3, 3), NOW, is_member=MEMBERS) is Verdict.OLD  # same version
    assert b.get(A).load == Load(5000, 1, 0)
    assert b.learn(A, Load(5001, 0, 0), NOW + 1, is_member=MEMBERS) is Verdict.NEWER
    assert b.get(A).load == Load(5001, 0, 0) and b.get(A).heard_at == NOW + 1


def test_strangers_take_no_memory_and_far_future_versions_are_refused():
    b = book(future_s=30)
    assert b.learn(b"\x09" * 16, Load(1, 1, 1), NOW, is_member=MEMBERS) is Verdict.UNKNOWN
    ahead = int(NOW * 1000) + 30_001
    assert b.learn(A, Load(ahead, 9, 9), NOW, is_member=MEMBERS) is Verdict.AHEAD
    assert len(b) == 0 and not b.pending
    assert b.learn(A, Load(ahead - 1, 9, 9), NOW, is_member=MEMBERS) is Verdict.NEWER


def test_own_versions_follow_the_clock_and_step_on_each_change():
    b = book()
    start = b.own.seq
    assert start == int(NOW * 1000)
    assert not b.set_own(0, 0, NOW)  # unchanged: no new version
    assert b.set_own(1, 0, NOW) and b.own == Load(start + 1, 1, 0)  # same ms: still higher
    assert b.set_own(2, 0, NOW + 5) and b.own.seq == int((NOW + 5) * 1000)
    assert b.pending


def test_a_lie_about_this_peer_is_refuted_above_it():
    b = book()
    b.set_own(1, 0, NOW)
    b.own_pending = False
    lie = Load(b.own.seq + 500, 0, 0)
    assert b.learn(ME, lie, NOW, is_member=MEMBERS) is Verdict.REFUTED
    assert b.own == Load(lie.seq + 1, 1, 0) and b.own_pending  # true value, above the lie
    assert b.learn(ME, b.own, NOW, is_member=MEMBERS) is Verdict.OLD  # its own value echoed back
    assert b.learn(ME, Load(b.own.seq, 7, 7), NOW, is_member=MEMBERS) is Verdict.REFUTED  # same version, other value


def test_take_sends_least_sent_then_newest_and_drops_after_the_limit():
    b = book()
    for i, pid in enumerate((A, B, C)):
        b.learn(pid, Load(100 + i, i, 0), NOW, is_member=MEMBERS)
    assert [p for p, _ in b.take(2, limit=2)] == [C, B]  # newest first
    assert [p for p, _ in b.take(2, limit=2)] == [A, C]  # A was sent least
    assert [p for p, _ in b.take(5, limit=2)] == [B, A]  # the last sends; C is done
    assert b.take(5, limit=2) == [] and not b.pending
    b.learn(A, Load(200, 1, 1), NOW, is_member=MEMBERS)  # a newer value is news again
    assert b.take(5, limit=2) == [(A, Load(200, 1, 1))]


def test_relay_is_bounded_and_departed_members_are_forgotten():
    b = book(max_relay=2)
    for i, pid in enumerate((A, B, C)):
        b.learn(pid, Load(100 + i, 0, 1), NOW, is_member=MEMBERS)
    assert b.relay_size == 2 and [p for p, _ in b.take(5, limit=9)] == [C, B]  # the oldest went
    b.retain({B}.__contains__)
    assert b.get(A) is None and b.get(C) is None and b.get(B) is not None
    assert [p for p, _ in b.take(5, limit=9)] == [B]


def test_load_wire_round_trip_and_refusals():
    news = m.pack_news(m.LoadNews(A, Load(123, 2, 5)))
    msg = m.decode_message(m.encode(m.Ping(7, B), [news], load=Load(99, 1, 0)), **LIMITS)
    assert msg.body == m.Ping(7, B) and msg.news == [m.LoadNews(A, Load(123, 2, 5))] and msg.load == Load(99, 1, 0)
    assert m.decode_message(m.encode(m.Ack(1)), **LIMITS).load is None
    for bad in ([1, 2], [1, True, 0], [1, -1, 0], [1, 0, MAX_LOAD_COUNT + 1], [1 << 63, 0, 0], "x"):
        with pytest.raises(GossipError) as e:
            m.decode_message(m.encode(m.Ack(1)).replace(b"\x81\xa1s\x01", b"\x82\xa1s\x01\xa1l" + _pack(bad)), **LIMITS)
        assert e.value.reason is GossipReason.BAD_LOAD
    for bad in ([3, A, 1, 1], [3, b"short", 1, 1, 1], [3, A, 1, 1, "x"]):
        with pytest.raises(GossipError) as e:
            m.decode_message(m.encode(m.Gossip(), [_pack(bad)]), **LIMITS)
        assert e.value.reason is GossipReason.BAD_LOAD


def _pack(value) -> bytes:
    return wire.pack(value)


def test_swim_carries_own_load_in_every_probe_and_relays_others_without_re_signing():
    lab = Lab(4)
    a, a_id = lab[0], lab.ids[0]
    lab.run(CFG_P)
    a.update_own_load(2, 1, lab.now)
    sent = sends(a.tick(lab.now + CFG_P))
    assert sent and all(decoded_load(fx) == a.own_load for fx in sent)
    lab.run(6 * CFG_P)
    assert a.own_record.version == 0  # never re-signed for load
    for o in (1, 2, 3):
        assert lab[o].load_of(a_id) == a.own_load and lab.view(o, 0).load == a.own_load


def test_swim_counts_bad_and_future_load_and_refutes_a_lie():
    lab = Lab(3)
    a, b_id, a_id = lab[0], lab.ids[1], lab.ids[0]
    bad = m.encode(m.Gossip(), [_pack([3, b_id, 1, -1, 0])])
    a.receive(b_id, bad, lab.now)
    assert a.stats.rejected["bad_load"] == 1
    ahead = int((lab.now + 60) * 1000)
    a.receive(b_id, m.encode(m.Gossip(), [m.pack_news(m.LoadNews(lab.ids[2], Load(ahead, 0, 0)))]), lab.now)
    assert a.stats.rejected["load_ahead"] == 1 and a.load_of(lab.ids[2]) is None
    lie = Load(a.own_load.seq + 10, 9, 9)
    a.receive(b_id, m.encode(m.Gossip(), [m.pack_news(m.LoadNews(a_id, lie))]), lab.now)
    assert a.own_load.seq > lie.seq and a.own_load.running == 0 and a.stats.events["load_refuted"] == 1
    lab.run(6 * CFG_P)
    assert lab[1].load_of(a_id) == a.own_load  # the true value overtook the lie


def test_resign_only_for_what_is_not_load():
    signed = PeerMeta(load=LoadInfo(running=0, waiting=0, parallel=2, queue_limit=8))
    assert not needs_resign(signed, with_load(signed, 2, 5))
    assert needs_resign(signed, PeerMeta(load=LoadInfo(running=0, waiting=0, parallel=4, queue_limit=8)))
    hw = signed.hw.__class__(ram_total_mb=16000, ram_available_mb=8000)
    base = PeerMeta(hw=hw, load=signed.load)
    small = PeerMeta(hw=hw.__class__(ram_total_mb=16000, ram_available_mb=7000), load=signed.load)
    big = PeerMeta(hw=hw.__class__(ram_total_mb=16000, ram_available_mb=6000), load=signed.load)
    assert not needs_resign(base, small) and needs_resign(base, big)


CFG_P = GossipConfig.for_tests().probe_interval_s


def decoded_load(fx) -> Load | None:
    return m.decode_message(fx.data, **{**LIMITS, "max_entries": 100}).load

