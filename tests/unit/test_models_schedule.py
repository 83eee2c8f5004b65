"""Which piece goes to which source in a pull from several peers (mesh.models.schedule)."""

from __future__ import annotations

from mesh.models.schedule import PieceSchedule


def test_pieces_are_shared_between_sources_and_each_is_asked_once():
    s = PieceSchedule(4, sources=["a", "b"])
    got = [s.next_for("a"), s.next_for("b"), s.next_for("a"), s.next_for("b"), s.next_for("a")]
    assert got == [0, 1, 2, 3, None]
    for i, who in enumerate("abab"):
        s.done_by(who, i)
    assert s.finished and s.delivered == {"a": 2, "b": 2}


def test_a_resumed_pull_asks_only_for_the_pieces_it_lacks():
    s = PieceSchedule(4, done={0, 2}, sources=["a"])
    assert [s.next_for("a"), s.next_for("a"), s.next_for("a")] == [1, 3, None]


def test_a_failed_piece_goes_back_first_and_a_dead_source_is_dropped():
    s = PieceSchedule(3, sources=["a", "b"], max_failures=2)
    assert s.next_for("a") == 0
    s.failed("a", 0)
    assert s.next_for("b") == 0  # back at the front, for anyone
    s.done_by("b", 0)
    assert s.next_for("a") == 1
    s.failed("a", 1)
    assert "a" in s.dropped and s.next_for("a") is None and s.active() == {"b"}
    assert [s.next_for("b"), s.next_for("b")] == [1, 2]


def test_a_success_resets_the_failure_count():
    s = PieceSchedule(4, sources=["a"], max_failures=2)
    s.failed("a", s.next_for("a"))
    s.done_by("a", s.next_for("a"))
    s.failed("a", s.next_for("a"))
    assert s.active() == {"a"}


def test_a_source_that_sends_a_bad_piece_is_never_asked_again():
    s = PieceSchedule(2, sources=["a", "b"])
    s.bad("a", s.next_for("a"))
    assert "a" in s.banned and s.next_for("a") is None
    s.add_source("a")  # rediscovered later: still banned
    assert s.active() == {"b"} and s.next_for("b") == 0


def test_with_no_source_left_the_pull_is_stuck_not_finished():
    s = PieceSchedule(2, sources=["a"])
    s.bad("a", s.next_for("a"))
    assert s.stuck and not s.finished
    assert PieceSchedule(0).finished and not PieceSchedule(0).stuck


def test_the_pacer_holds_a_pull_to_its_rate_after_a_burst():
    from mesh.models.rate import BytePacer

    pacer = BytePacer(1000, burst_s=1.0)
    assert pacer.reserve(1000, now=0.0) == 0.0  # the burst
    assert pacer.reserve(500, now=0.0) == 0.5
    assert pacer.reserve(500, now=0.0) == 1.0
    waits = [pacer.reserve(1000, now=10.0 + t) for t in range(5)]  # idle long enough: one burst, then the rate
    assert waits == [0.0, 0.0, 0.0, 0.0, 0.0]  # a second apart: exactly the rate
    assert BytePacer(0).reserve(10**9, now=0.0) == 0.0
