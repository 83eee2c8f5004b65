"""Our own requests in gossiped load (mesh.routing.echo): counted once, and not after
they have finished."""

from __future__ import annotations

from test_routing_builders import cand

from mesh.routing.echo import SentLog, without_echo


def test_a_finished_request_still_in_the_gossiped_value_is_its_echo():
    log = SentLog()
    r = log.started("x", now=10.0)
    # x said "running 1" at 10.3 (our request), and we heard it then
    assert log.echo("x", heard_at=10.3, now=10.4) == 1  # still running: counted by reservations instead
    log.ended(r, now=11.0)
    assert log.echo("x", heard_at=10.3, now=11.1) == 1  # finished: the value is stale by exactly it
    assert log.echo("x", heard_at=11.5, now=11.6) == 0  # a value heard after it ended does not count it


def test_a_request_started_after_the_value_was_heard_is_not_in_it():
    log = SentLog()
    log.started("x", now=12.0)
    assert log.echo("x", heard_at=11.0, now=12.1) == 0
    assert log.echo("y", heard_at=11.0, now=12.1) == 0


def test_old_entries_are_forgotten():
    log = SentLog(keep_s=5.0)
    r = log.started("x", now=0.0)
    log.ended(r, now=1.0)
    assert log.echo("x", heard_at=0.5, now=100.0) == 0 and not log._by_peer


def test_the_echo_comes_out_of_running_then_waiting():
    c = cand("x", running=1, waiting=2)
    assert (without_echo(c, 1).running, without_echo(c, 1).waiting) == (0, 2)
    assert (without_echo(c, 2).running, without_echo(c, 2).waiting) == (0, 1)
    assert (without_echo(c, 9).running, without_echo(c, 9).waiting) == (0, 0)
    assert without_echo(c, 0) is c
