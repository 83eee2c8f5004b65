"""SessionAffinity: a bounded LRU of session id -> peer, forgotten on failure."""

from __future__ import annotations

import pytest

from mesh.routing import SessionAffinity


def test_remember_get_and_forget():
    aff = SessionAffinity(max_sessions=4)
    assert aff.get("s1") is None and aff.get(None) is None
    aff.remember("s1", "pa")
    aff.remember(None, "pa")  # no session: nothing to remember
    assert aff.get("s1") == "pa" and len(aff) == 1
    aff.remember("s1", "pb")  # moved
    assert aff.get("s1") == "pb"
    aff.forget("s1")
    aff.forget("unknown")
    assert aff.get("s1") is None


def test_bounded_lru_evicts_the_least_recently_remembered():
    aff = SessionAffinity(max_sessions=3)
    for s, p in (("s1", "pa"), ("s2", "pb"), ("s3", "pc")):
        aff.remember(s, p)
    aff.get("s1")  # reading does not refresh
    aff.remember("s2", "pb")  # serving does
    aff.remember("s4", "pd")
    assert aff.get("s1") is None and [aff.get(s) for s in ("s2", "s3", "s4")] == ["pb", "pc", "pd"]
    aff.remember("s2", "pb")  # s3 is now the least recently served
    aff.remember("s5", "pe")
    assert aff.get("s3") is None and aff.get("s2") == "pb"
    for i in range(100):
        aff.remember(f"x{i}", "pa")
    assert len(aff) == 3


def test_forget_peer_drops_every_session_on_it():
    aff = SessionAffinity(max_sessions=10)
    for s, p in (("s1", "pa"), ("s2", "pb"), ("s3", "pa")):
        aff.remember(s, p)
    assert aff.forget_peer("pa") == 2
    assert aff.get("s1") is None and aff.get("s3") is None and aff.get("s2") == "pb"


def test_needs_room_for_one():
    with pytest.raises(ValueError):
        SessionAffinity(max_sessions=0)
