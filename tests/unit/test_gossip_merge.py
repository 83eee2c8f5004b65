"""The merge rules, one piece of news against one table entry (pure functions)."""

from __future__ import annotations

import random

import pytest

from mesh.gossip.member import Member, Status
from mesh.gossip.merge import is_news, merge_dead, merge_record, merge_suspect
from mesh.testing.network import SimAuthority

A, S, D, L = Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT
NOW = 50.0


@pytest.fixture
def rec():
    auth = SimAuthority(random.Random(1))
    pid = auth.new_identity()
    return lambda inc=0, ver=0, left=False: auth.record(pid, incarnation=inc, version=ver, left=left)


def entry(record, status=A, inc=None, since=1.0):
    return Member(record, status, record.incarnation if inc is None else inc, since)


# --- records (owner-signed alive / left news) -------------------------------------------


def test_unknown_member_is_created_from_its_record(rec):
    got = merge_record(None, rec(2, 5), now=NOW)
    assert (got.status, got.incarnation, got.since, got.record.version) == (A, 2, NOW, 5)
    assert merge_record(None, rec(2, left=True), now=NOW).status is L


def test_newer_version_replaces_the_record_keeping_the_status(rec):
    cur = entry(rec(1, 1))
    got = merge_record(cur, rec(1, 2), now=NOW)
    assert got.record.version == 2 and got.status is A and got.since == 1.0


@pytest.mark.parametrize(("inc", "ver"), [(1, 1), (1, 0), (0, 9)])
def test_same_or_older_record_is_not_news(rec, inc, ver):
    cur = entry(rec(1, 1))
    assert not is_news(cur, rec(inc, ver))
    assert merge_record(cur, rec(inc, ver), now=NOW) is None


@pytest.mark.parametrize("status", [S, D, L])
def test_higher_incarnation_from_the_owner_revives(rec, status):
    cur = entry(rec(1, 4), status)
    got = merge_record(cur, rec(2, 5), now=NOW)
    assert (got.status, got.incarnation, got.since) == (A, 2, NOW)


@pytest.mark.parametrize("status", [S, D])
def test_a_record_at_the_same_incarnation_does_not_refute(rec, status):
    # Only a bumped incarnation refutes; a meta refresh at the suspected incarnation does not.
    cur = entry(rec(1, 4), status)
    got = merge_record(cur, rec(1, 5), now=NOW)
    assert got.status is status and got.record.version == 5 and got.since == 1.0


@pytest.mark.parametrize("status", [A, S, D])
def test_left_is_final_for_its_incarnation(rec, status):
    got = merge_record(entry(rec(3, 1), status), rec(3, 2, left=True), now=NOW)
    assert got.status is L and got.incarnation == 3
    assert merge_record(got, rec(3, 9), now=NOW) is None  # no alive record outranks it


def test_newer_record_below_a_higher_assertion_keeps_the_assertion(rec):
    cur = entry(rec(1, 0), D, inc=5)
    got = merge_record(cur, rec(4, 0), now=NOW)
    assert (got.status, got.incarnation, got.record.incarnation) == (D, 5, 4)


# --- suspect (anyone's assertion) --------------------------------------------------------


def test_suspect_never_creates_an_entry():
    assert merge_suspect(None, 0, now=NOW) is None
    assert merge_dead(None, 0, now=NOW) is None


def test_suspect_alive_at_current_or_higher_incarnation(rec):
    cur = entry(rec(2))
    got = merge_suspect(cur, 2, now=NOW)
    assert (got.status, got.incarnation, got.since) == (S, 2, NOW)
    assert merge_suspect(cur, 3, now=NOW).incarnation == 3
    assert merge_suspect(cur, 1, now=NOW) is None  # stale: the owner already refuted it


def test_suspect_of_a_suspect_is_a_confirmation_not_a_change(rec):
    cur = entry(rec(2), S)
    assert merge_suspect(cur, 2, now=NOW) is None
    raised = merge_suspect(cur, 3, now=NOW)
    assert (raised.status, raised.incarnation, raised.since) == (S, 3, 1.0)


@pytest.mark.parametrize("status", [D, L])
def test_suspect_never_overrides_dead_or_left(rec, status):
    assert merge_suspect(entry(rec(2), status), 2, now=NOW) is None
    assert merge_suspect(entry(rec(2), status), 7, now=NOW) is None


# --- dead (anyone's assertion) ------------------------------------------------------------


@pytest.mark.parametrize("status", [A, S])
def test_dead_beats_alive_and_suspect_at_equal_incarnation(rec, status):
    got = merge_dead(entry(rec(2), status), 2, now=NOW)
    assert (got.status, got.incarnation, got.since) == (D, 2, NOW)


def test_dead_below_the_known_incarnation_is_ignored(rec):
    assert merge_dead(entry(rec(3)), 2, now=NOW) is None


def test_dead_of_dead_only_raises_the_incarnation(rec):
    cur = entry(rec(2), D)
    assert merge_dead(cur, 2, now=NOW) is None
    got = merge_dead(cur, 4, now=NOW)
    assert (got.status, got.incarnation, got.since) == (D, 4, 1.0)


def test_left_outranks_dead_at_its_incarnation_but_not_above(rec):
    cur = entry(rec(2, left=True), L)
    assert merge_dead(cur, 2, now=NOW) is None
    assert merge_dead(cur, 3, now=NOW).status is D  # it came back at 3 and then died


def test_precedence_table(rec):
    """alive < suspect < dead < left at equal incarnation; any higher incarnation wins."""
    order = [A, S, D]
    for i, cur_status in enumerate(order):
        cur = entry(rec(2), cur_status)
        assert (merge_suspect(cur, 2, now=NOW) is not None) == (i < 1)
        assert (merge_dead(cur, 2, now=NOW) is not None) == (i < 2)
