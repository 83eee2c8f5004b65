"""The Swim state machine, driven by hand: injected clock and rng, no sockets, no sleeping."""

from __future__ import annotations

import random

import pytest

from mesh.gossip import GossipConfig, MemberChanged, Send, Status, Swim
from mesh.gossip import messages as m
from mesh.testing.network import SimAuthority

CFG = GossipConfig.for_tests()
T0 = 100.0


class Lab:
    """A few Swim instances; effects are delivered at once unless ``drop`` says otherwise."""

    def __init__(self, n: int, *, cfg: GossipConfig = CFG, know_each_other: bool = True, seed: int = 1):
        self.auth = SimAuthority(random.Random(seed))
        self.now = T0
        self.ids = [self.auth.new_identity() for _ in range(n)]
        self.addr = {pid: f"tcp://p{i}:7411" for i, pid in enumerate(self.ids)}
        self.by_addr = {a: pid for pid, a in self.addr.items()}
        self.swims = {pid: self.new_swim(pid, cfg, seed=i) for i, pid in enumerate(self.ids)}
        self.changes: list[tuple[bytes, MemberChanged]] = []
        self.drop = lambda src, dst, kind: False
        if know_each_other:
            records = [s.own_record for s in self.swims.values()]
            for s in self.swims.values():
                s.learn(records, self.now)

    def new_swim(self, pid, cfg=CFG, *, seed=0, **fields) -> Swim:
        own = self.auth.record(pid, name=f"p{self.ids.index(pid)}", addresses=(self.addr[pid],), **fields)
        return Swim(
            own,
            cfg,
            now=self.now,
            rng=random.Random(seed),
            sign=self.auth.sign_for(pid),
            verify_record=self.auth.verify_record,
        )

    def __getitem__(self, i: int) -> Swim:
        return self.swims[self.ids[i]]

    def deliver(self, src: bytes, effects: list) -> None:
        pending = [(src, fx) for fx in effects]
        while pending:
            src, fx = pending.pop(0)
            if isinstance(fx, MemberChanged):
                self.changes.append((src, fx))
                continue
            if not isinstance(fx, Send):
                continue
            dst = self.by_addr.get(fx.addresses[0]) if fx.addresses else fx.peer_id
            if dst not in self.swims or self.drop(src, dst, fx.kind):
                continue
            out = self.swims[dst].receive(src, fx.data, self.now, sender_address=self.addr[src])
            pending.extend((dst, x) for x in out)

    def run(self, seconds: float, *, step: float = 0.002) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 9)
            for pid, s in self.swims.items():
                if s.next_tick_at <= self.now:
                    self.deliver(pid, s.tick(self.now))

    def view(self, observer: int, target: int):
        return self[observer].member(self.ids[target])


def news_message(*items, body=None) -> bytes:
    return m.encode(body or m.Gossip(), [m.pack_news(x) for x in items])


def sends(effects, kind=None):
    return [fx for fx in effects if isinstance(fx, Send) and (kind is None or fx.kind == kind)]


def decoded(fx: Send):
    return m.decode(fx.data, max_bytes=1 << 20, max_news=64, max_entries=100)


# --- probing ------------------------------------------------------------------------------


def test_probe_ping_then_ack():
    lab = Lab(2)
    a, b = lab[0], lab[1]
    pings = []
    while not pings:  # the first ticks may only gossip its own record
        lab.now = a.next_tick_at
        pings = sends(a.tick(lab.now), "ping")
    assert len(pings) == 1 and lab.now <= T0 + CFG.probe_interval_s
    ping = pings[0]
    assert ping.peer_id == lab.ids[1] and ping.addresses == (lab.addr[lab.ids[1]],)
    body, _ = decoded(ping)
    assert body.target == lab.ids[1]
    acks = sends(b.receive(lab.ids[0], ping.data, lab.now), "ack")
    assert len(acks) == 1 and decoded(acks[0])[0] == m.Ack(body.seq)
    a.receive(lab.ids[1], acks[0].data, lab.now)
    lab.run(CFG.probe_interval_s * 5)  # more probes, all answered
    assert a.stats.events["probe_failed"] == 0 and a.awareness == 0
    assert lab.view(0, 1).status is Status.ALIVE and lab.view(0, 1).last_heard is not None


def test_silent_member_is_pinged_indirectly_then_suspected_then_dead():
    lab = Lab(4)
    dead = lab.ids[3]
    lab.drop = lambda src, dst, kind: dead in (src, dst)
    lab.run(CFG.probe_interval_s * 3)
    assert sum(lab[i].stats.sent["ping_req"] for i in range(3)) > 0
    assert sum(lab[i].stats.received["nack"] for i in range(3)) > 0  # relays said "no answer"
    suspected = [c for _, c in lab.changes if c.peer_id == dead and c.new is Status.SUSPECT]
    assert len(suspected) == 3 and all(c.old is Status.ALIVE for c in suspected)
    assert not [c for _, c in lab.changes if c.new is Status.DEAD]
    lab.run(3.0)
    assert all(lab.view(i, 3).status is Status.DEAD for i in range(3))
    assert all(lab.view(i, j).status is Status.ALIVE for i in range(3) for j in range(3))


def test_one_lost_ping_is_rescued_without_suspicion():
    lab = Lab(4)
    lost = []

    def drop_first_ping(src, dst, kind):
        if kind == "ping" and not lost:
            lost.append((src, dst))
            return True
        return False

    lab.drop = drop_first_ping
    lab.run(CFG.probe_interval_s * 4)
    assert lost
    assert not [c for _, c in lab.changes if c.new in (Status.SUSPECT, Status.DEAD)]


def test_with_no_one_to_ask_a_lost_ping_is_retried_directly():
    lab = Lab(2)
    lost = []
    lab.drop = lambda src, dst, kind: kind == "ping" and not lost and not lost.append(1)
    lab.run(CFG.probe_interval_s * 3)
    assert lost and lab[0].stats.sent["ping_req"] == 0
    assert not [c for _, c in lab.changes if c.new is Status.SUSPECT]


def test_a_failed_probe_does_not_suspect_a_life_that_started_during_it():
    lab = Lab(2)
    a, b = lab.ids
    lab.drop = lambda src, dst, kind: True  # b is silent (restarting)
    while not lab[0].stats.sent["ping"]:
        lab.now = lab[0].next_tick_at
        lab.deliver(a, lab[0].tick(lab.now))
    lab[0].learn([lab.auth.record(b, incarnation=1, addresses=(lab.addr[b],))], lab.now)  # its refutation
    lab.run(CFG.probe_interval_s)
    assert lab[0].stats.events["probe_failed"] >= 1
    assert lab.view(0, 1).status is Status.ALIVE and lab.view(0, 1).incarnation == 1


def test_relay_forwards_the_ack_or_answers_nack():
    lab = Lab(3)
    a, b, c = lab.ids
    req = m.encode(m.PingReq(77, c, (lab.addr[c],), nack=True))
    out = lab[1].receive(a, req, lab.now)
    ping = sends(out, "ping")[0]
    assert ping.peer_id == c
    ack = sends(lab[2].receive(b, ping.data, lab.now), "ack")[0]
    forwarded = sends(lab[1].receive(c, ack.data, lab.now), "ack")[0]
    assert forwarded.peer_id == a and decoded(forwarded)[0] == m.Ack(77)
    # the target stays silent: a nack after the probe timeout
    out = lab[1].receive(a, m.encode(m.PingReq(78, c, (), nack=True)), lab.now)
    assert sends(out, "ping")
    lab.now += CFG.probe_timeout_s
    nacks = sends(lab[1].tick(lab.now), "nack")
    assert len(nacks) == 1 and decoded(nacks[0])[0] == m.Nack(78) and nacks[0].peer_id == a


# --- suspicion, confirmation, refutation ---------------------------------------------------


@pytest.mark.parametrize("confirmed", [False, True])
def test_confirmations_shrink_the_suspicion_timer(confirmed):
    cfg = CFG.with_(suspicion_confirmations=2)
    lab = Lab(6, cfg=cfg)
    obs, target, others = lab[0], lab.ids[1], lab.ids[2:]
    obs.receive(others[0], news_message(m.Suspect(target, 0, others[0])), lab.now)
    if confirmed:
        obs.receive(others[1], news_message(m.Suspect(target, 0, others[1])), lab.now)
        obs.receive(others[2], news_message(m.Suspect(target, 0, others[2])), lab.now)
        assert obs.stats.events["confirmed"] == 2
    min_s = cfg.suspicion_mult * cfg.probe_interval_s  # n = 6: log10 < 1
    obs.tick(lab.now + min_s + 0.001)
    expected = Status.DEAD if confirmed else Status.SUSPECT
    assert obs.member(target).status is expected
    obs.tick(lab.now + min_s * cfg.suspicion_max_mult + 0.001)
    assert obs.member(target).status is Status.DEAD


def test_suspected_member_refutes_with_a_higher_incarnation():
    lab = Lab(2)
    a, b = lab[0], lab.ids[1]
    a.receive(b, news_message(m.Suspect(lab.ids[0], 0, b)), lab.now)
    own = a.own_record
    assert own.incarnation == 1 and lab.auth.verify_record(own) and a.stats.events["refuted"] == 1
    assert a.pending_news >= 1
    # a stale claim (below our incarnation): no new refutation, but the sender is told
    out = a.receive(b, news_message(m.Dead(lab.ids[0], 0, b)), lab.now)
    assert a.own_record.incarnation == 1
    corrections = sends(out, "gossip")
    assert corrections and corrections[0].peer_id == b
    assert m.Alive(own) in decoded(corrections[0])[1]
    # a dead claim at the current incarnation refutes too
    a.receive(b, news_message(m.Dead(lab.ids[0], 1, b)), lab.now + 1)
    assert a.own_record.incarnation == 2


def test_messages_to_a_suspect_carry_the_suspicion_first():
    lab = Lab(3)
    a, b, c = lab.ids
    lab[0].receive(c, news_message(m.Suspect(b, 0, c)), lab.now)
    ack = sends(lab[0].receive(b, m.encode(m.Ping(5, a)), lab.now), "ack")[0]
    assert decoded(ack)[1][0] == m.Suspect(b, 0, a)  # Lifeguard's buddy system


def test_sync_entries_carry_suspect_and_dead_states():
    lab = Lab(4)
    _a, _b, _c, d = lab.ids
    entries = (
        m.SyncEntry(Status.DEAD, 0, lab[1].own_record),
        m.SyncEntry(Status.SUSPECT, 0, lab[2].own_record),
    )
    lab[0].receive(d, m.encode(m.Sync(entries, None, reply=False, join=False)), lab.now)
    assert lab.view(0, 1).status is Status.DEAD and lab.view(0, 2).status is Status.SUSPECT


def test_a_peer_passing_on_a_refuted_claim_is_sent_the_refutation():
    lab = Lab(3)
    _a, b, c = lab.ids
    refuted = lab.auth.record(b, incarnation=1, addresses=(lab.addr[b],))
    lab[0].learn([refuted], lab.now)
    told = sends(lab[0].receive(c, news_message(m.Suspect(b, 0, c)), lab.now), "gossip")
    assert told and told[0].peer_id == c and decoded(told[0])[1] == [m.Alive(refuted)]
    assert lab.view(0, 1).status is Status.ALIVE


def test_a_member_suspected_by_others_is_probed_next():
    lab = Lab(8)
    target = lab.ids[5]
    lab[0].receive(lab.ids[3], news_message(m.Suspect(target, 0, lab.ids[3])), lab.now)
    pings = []
    while not pings:
        lab.now = lab[0].next_tick_at
        pings = sends(lab[0].tick(lab.now), "ping")
    assert pings[0].peer_id == target


def test_refutation_reaches_the_suspecters():
    lab = Lab(5)
    target = lab.ids[4]
    claim = news_message(m.Suspect(target, 0, lab.ids[0]))
    for i in range(4):
        lab[i].receive(lab.ids[0] if i else lab.ids[1], claim, lab.now)
    assert all(lab.view(i, 4).status is Status.SUSPECT for i in range(4))
    lab.run(CFG.probe_interval_s * 5)
    assert all(lab.view(i, 4).status is Status.ALIVE and lab.view(i, 4).incarnation == 1 for i in range(4))


# --- records: forged, unknown, own ghosts -----------------------------------------------------


def test_forged_records_never_enter_the_table():
    lab = Lab(3)
    _a, b, c = lab.ids
    forged = lab.auth.forge(c, incarnation=50)
    lab[0].receive(b, news_message(m.Alive(forged)), lab.now)
    view = lab.view(0, 2)
    assert view.incarnation == 0 and view.addresses == (lab.addr[c],)
    newcomer = lab.auth.new_identity()
    lab[0].receive(b, news_message(m.Alive(lab.auth.forge(newcomer))), lab.now)
    sync = m.Sync((m.SyncEntry(Status.ALIVE, 0, lab.auth.forge(newcomer, incarnation=1)),), None, False, False)
    lab[0].receive(b, m.encode(sync), lab.now)
    assert lab[0].member(newcomer) is None
    assert lab[0].stats.rejected["bad_record"] == 3


def test_claims_about_unknown_ids_create_nothing():
    lab = Lab(2)
    a, b = lab[0], lab.ids[1]
    rng = random.Random(5)
    for _ in range(200):
        items = [(m.Suspect if rng.random() < 0.5 else m.Dead)(rng.randbytes(16), 0, b) for _ in range(60)]
        a.receive(b, news_message(*items), lab.now)
    assert len(a.members()) == 2


def test_table_is_bounded_and_evicts_only_the_departed():
    cfg = CFG.with_(max_members=3)
    lab = Lab(6, cfg=cfg, know_each_other=False)
    a = lab[0]
    records = [lab[i].own_record for i in range(1, 6)]
    a.learn(records[:4], lab.now)
    assert len(a.members()) == 1 + 3 and a.stats.rejected["table_full"] == 1
    victim = a.members()[1].peer_id
    a.receive(lab.ids[1], news_message(m.Dead(victim, 0, lab.ids[1])), lab.now)
    out = a.learn([records[4]], lab.now)
    assert a.member(records[4].peer_id) is not None and a.member(victim) is None
    assert MemberChanged(victim, lab.swims[victim].own_record.name, Status.DEAD, None, 0) in out
    # the reclaimed member's old life cannot come back: its tombstone refuses it
    a.learn([lab.swims[victim].own_record], lab.now)
    assert a.member(victim) is None


def test_reclaimed_members_leave_a_tombstone_that_refuses_their_old_life():
    lab = Lab(3)
    a, b, c = lab.ids
    old = lab[1].own_record
    lab[0].receive(c, news_message(m.Dead(b, 0, c)), lab.now)
    out = lab[0].tick(lab.now + CFG.dead_reclaim_s + CFG.dead_reclaim_s / 5)
    assert MemberChanged(b, old.name, Status.DEAD, None, 0) in out and lab[0].member(b) is None
    lab[0].learn([old], lab.now)
    assert lab[0].member(b) is None
    told = sends(lab[0].receive(b, news_message(m.Alive(old)), lab.now), "gossip")
    assert told and decoded(told[0])[1] == [m.Dead(b, 0, a)]  # so the owner refutes above it
    lab[0].learn([lab.auth.record(b, incarnation=1, addresses=old.addresses)], lab.now)
    assert lab.view(0, 1).status is Status.ALIVE


def test_restarted_peer_steps_above_its_previous_life():
    lab = Lab(2)
    a_id, b = lab.ids
    old_life = lab.auth.record(a_id, incarnation=4, version=30, addresses=(lab.addr[a_id],))
    fresh = lab.new_swim(a_id)
    assert fresh.own_record.incarnation == 0
    fresh.receive(b, news_message(m.Alive(old_life)), lab.now)
    assert fresh.own_record.incarnation == 5 and fresh.own_record.version > 0
    # same key but different content (a previous life that never changed): also replaced
    fresh2 = lab.new_swim(a_id, meta={"life": 2})
    fresh2.receive(b, news_message(m.Alive(lab.auth.record(a_id, meta={"life": 1}))), lab.now)
    assert fresh2.own_record.incarnation == 1 and fresh2.own_record.meta == {"life": 2}


def test_a_peer_sending_an_old_record_of_itself_is_told_of_the_newer_one():
    lab = Lab(2)
    a_id, b_id = lab.ids
    newer = lab.auth.record(b_id, incarnation=3, addresses=(lab.addr[b_id],))
    lab[0].learn([newer], lab.now)
    out = lab[0].receive(b_id, news_message(m.Alive(lab[1].own_record)), lab.now)
    told = sends(out, "gossip")
    assert told and m.Alive(newer) in decoded(told[0])[1]
    lab.deliver(a_id, told)
    assert lab[1].own_record.incarnation == 4


# --- own meta, leave, join -------------------------------------------------------------------


def test_meta_refresh_is_rate_limited_and_queues_only_the_newest():
    lab = Lab(2)
    a = lab[0]
    for load in range(10):
        a.update_own_meta({"load": load}, lab.now)
    assert a.own_record.version == 0 and a.pending_news <= 1
    assert a.next_tick_at <= lab.now + CFG.meta_min_interval_s
    a.tick(lab.now + CFG.meta_min_interval_s)
    assert a.own_record.version == 1 and a.own_record.meta == {"load": 9}
    assert lab.auth.verify_record(a.own_record) and a.pending_news == 1
    lab.run(CFG.probe_interval_s * 3)
    assert lab.view(1, 0).meta == {"load": 9} and lab.view(1, 0).incarnation == 0


def test_leave_announces_a_signed_left_record_and_stops_probing():
    lab = Lab(3)
    out = lab[0].leave(lab.now)
    assert lab[0].left and lab[0].own_record.left and lab.auth.verify_record(lab[0].own_record)
    assert sends(out, "gossip")
    lab.deliver(lab.ids[0], out)
    lab.run(CFG.probe_interval_s * 3)
    assert lab[0].stats.sent["ping"] == 0
    assert all(lab.view(i, 0).status is Status.LEFT for i in (1, 2))
    lab[1].receive(lab.ids[2], news_message(m.Dead(lab.ids[0], 0, lab.ids[2])), lab.now)
    assert lab.view(1, 0).status is Status.LEFT


def test_leaving_drops_the_probe_in_flight():
    lab = Lab(2)
    a, _b = lab.ids
    lab.drop = lambda src, dst, kind: True
    while not lab[0].stats.sent["ping"]:
        lab.now = lab[0].next_tick_at
        lab.deliver(a, lab[0].tick(lab.now))
    lab.deliver(a, lab[0].leave(lab.now))
    lab.run(CFG.probe_interval_s * 2)
    assert lab[0].stats.events["probe_failed"] == 0 and lab.view(0, 1).status is Status.ALIVE


def test_join_pushes_and_pulls_through_a_seed_and_retries():
    lab = Lab(3, know_each_other=False)
    lab[0].learn([lab[2].own_record], lab.now)
    seed = lab.addr[lab.ids[0]]
    lost = []
    lab.drop = lambda src, dst, kind: kind == "sync" and len(lost) < 1 and not lost.append(1)
    out = lab[1].join([seed], lab.now)
    sync = sends(out, "sync")
    assert len(sync) == 1 and sync[0].peer_id is None and sync[0].addresses == (seed,)
    lab.deliver(lab.ids[1], out)  # lost
    assert lab[1].member(lab.ids[0]) is None
    lab.run(CFG.join_retry_s + 0.01)
    assert lab.view(1, 0).status is Status.ALIVE and lab.view(1, 2).status is Status.ALIVE
    assert lab.view(0, 1).status is Status.ALIVE
    joins = lab[1].stats.sent["sync"]
    lab.run(CFG.join_retry_s * 3)
    assert lab[1].stats.sent["sync"] == joins  # joined: no more retries


# --- hostile or odd input ------------------------------------------------------------------


def test_bad_input_is_counted_and_dropped_never_raised():
    lab = Lab(2)
    a, b = lab[0], lab.ids[1]
    assert a.receive(b, b"\xc1garbage", lab.now) == []
    assert a.receive(b, b"x" * (CFG.max_message_bytes + 1), lab.now) == []
    assert a.receive(lab.ids[0], m.encode(m.Ping(1, lab.ids[0])), lab.now) == []
    assert a.receive(b, m.encode(m.Ping(1, b"\x09" * 16)), lab.now) == []
    assert a.stats.rejected == {"malformed": 1, "oversize": 1, "from_self": 1, "misdirected": 1}


def test_an_unknown_sender_is_answered_at_its_address_and_asked_for_its_state():
    lab = Lab(1)
    stranger = lab.auth.new_identity()
    out = lab[0].receive(stranger, m.encode(m.Ping(9, lab.ids[0])), lab.now, sender_address="tcp://9.9.9.9:1")
    ack, intro = sends(out, "ack"), sends(out, "sync")
    assert ack[0].peer_id == stranger and ack[0].addresses == ("tcp://9.9.9.9:1",)
    assert intro and decoded(intro[0])[0].reply


def test_timers_never_spin():
    lab = Lab(3)
    a = lab[0]
    now = lab.now
    for _ in range(500):  # nobody answers: every timer path runs
        now = max(now, a.next_tick_at)
        a.tick(now)
        assert a.next_tick_at > now
