"""Planning a split across peers (issue 16), pure: how many slots must leave a peer,
which lenders take them, how many in proportion to memory, and the gossip that says
what a peer lends and where its layers are."""

from __future__ import annotations

import msgpack
import pytest

from mesh.gossip.view import BAD_LEND, BadMeta, LendInfo, PeerMeta, SplitPart
from mesh.inference.split_plan import LenderCandidate, choose_lenders, remote_slots, slot_bytes, spread

MB = 1 << 20
SMOL = 98_362_432  # SmolLM2-135M Q4_1: 30 layers


def _lender(pid: str, free_mb: int, busy: int = 0, rtt: float | None = None) -> LenderCandidate:
    return LenderCandidate(pid, pid, f"tcp://10.0.0.{len(pid)}:7411", "k" * 52, free_mb * MB, busy, rtt)


def test_a_model_that_fits_the_budget_stays_whole():
    assert remote_slots(SMOL, 30, SMOL) == 0
    assert remote_slots(SMOL, 30, 10 * SMOL) == 0


def test_what_stays_fits_the_budget_and_the_rest_leaves():
    slot = slot_bytes(SMOL, 30)
    for budget in (20 * MB, 45_000_000, 60 * MB, SMOL - 1):
        k = remote_slots(SMOL, 30, budget)
        assert 0 < k <= 31
        stays = (31 - k + 1) * slot  # the local slots and the token embeddings
        assert stays <= budget, budget
        assert (31 - k + 2) * slot > budget or k == 0  # and no more left than must
    assert remote_slots(SMOL, 30, 0) == 31  # nothing fits: every slot leaves, the embeddings stay


def test_one_lender_when_one_can_hold_it_the_nearest_then_the_least_busy():
    lenders = [_lender("a", 10), _lender("bb", 40, busy=3, rtt=0.001), _lender("ccc", 40, rtt=0.001),
               _lender("dddd", 90, rtt=0.020)]
    assert [c.peer_id for c in choose_lenders(lenders, 30 * MB)] == ["ccc"]  # near and idle beats far "dddd"
    assert [c.peer_id for c in choose_lenders(lenders, 50 * MB)] == ["dddd"]  # only it can alone
    # a round trip per token beats a queue: the nearest wins even when it is busier
    near_busy, far_idle = _lender("near", 40, busy=2, rtt=0.001), _lender("far", 40, busy=0, rtt=0.020)
    assert [c.peer_id for c in choose_lenders([far_idle, near_busy], 30 * MB)] == ["near"]


def test_otherwise_the_fewest_most_free_memory_first():
    lenders = [_lender("a", 10), _lender("bb", 40, busy=3), _lender("ccc", 40), _lender("dddd", 5)]
    assert [c.peer_id for c in choose_lenders(lenders, 70 * MB)] == ["ccc", "bb"]
    assert [c.peer_id for c in choose_lenders(lenders, 95 * MB)] == ["ccc", "bb", "a", "dddd"]
    assert choose_lenders(lenders, 96 * MB) == []  # all of them together cannot: no partial plan
    # the fewest links: the most free memory first, even when it is farther
    spread_out = [_lender("big", 40, rtt=0.020), _lender("n1", 30, rtt=0.001), _lender("n2", 30, rtt=0.001)]
    assert [c.peer_id for c in choose_lenders(spread_out, 65 * MB)] == ["big", "n1"]
    assert choose_lenders([], 1) == []


def test_slots_spread_in_proportion_to_memory_never_below_what_must_leave():
    assert spread(30, 10, 100, [100]) == 16  # half the memory lent: about half of 31 slots
    assert spread(30, 20, 100, [100]) == 20  # but at least what must leave
    assert spread(30, 5, 0, [100]) == 31  # no local memory: all of them
    assert spread(30, 3, 100, [0]) == 3


def test_lend_and_split_survive_the_wire_and_read_back_equal():
    meta = PeerMeta(lend=LendInfo(offer_mb=57, free_mb=13, port=40001, build="llama-cpp-python/0.3.36"),
                    split=(SplitPart("me", "big", 16), SplitPart("them", "l1", 15)))
    wire = msgpack.unpackb(msgpack.packb(meta.to_wire()))
    assert PeerMeta.from_wire(wire) == meta
    assert "lend" not in PeerMeta().to_wire() and "split" not in PeerMeta().to_wire()


@pytest.mark.parametrize("lend, split", [
    ({"offer_mb": 10, "free_mb": 11, "port": 1, "build": "b"}, []),  # more free than offered
    ({"offer_mb": 10, "free_mb": 1, "port": 70000, "build": "b"}, []),  # no such port
    ({"offer_mb": 10, "free_mb": 1, "port": 1, "build": ""}, []),  # no build
    ({"offer_mb": 0, "free_mb": 0, "port": 1, "build": "b"}, []),  # lends nothing
    ("10 GB", []),
    (None, [{"peer": "x", "name": "x", "layers": -1}]),
    (None, [{"peer": "x", "name": "x", "layers": 1}] * 17),  # too many parts
    (None, "all of them"),
])
def test_a_bad_lend_or_split_is_refused_as_such(lend, split):
    wire = PeerMeta().to_wire()
    if lend is not None:
        wire["lend"] = lend
    wire["split"] = split
    with pytest.raises(BadMeta) as e:
        PeerMeta.from_wire(wire)
    assert e.value.reason == BAD_LEND


def test_the_dashboard_row_shows_who_holds_which_slots_and_what_a_peer_lends():
    from mesh.gossip.view import MemberView
    from mesh.http.dashboard import member_row

    meta = PeerMeta(lend=LendInfo(offer_mb=57, free_mb=13, port=40001, build="b"),
                    split=(SplitPart("p1", "big", 16), SplitPart("p2", "", 15)))
    row = member_row(MemberView(peer_id="p1", name="big", state="alive", meta=meta), choices={})
    assert row["layers"] == [{"name": "big", "layers": 16}, {"name": "p2", "layers": 15}]
    assert row["lends"] == {"offer_mb": 57, "free_mb": 13}
    plain = member_row(MemberView(peer_id="p3", name="x", state="alive", meta=PeerMeta()), choices={})
    assert plain["layers"] == [] and plain["lends"] is None
