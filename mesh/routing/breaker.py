"""``BreakerBook``: one circuit breaker per peer, with the clock passed in.

States (Nygard, "Release It!"; the shape of resilience4j's count-based breaker)::

    CLOSED --(breaker_failures consecutive failures, or a failure rate of at least
              breaker_failure_rate over the last breaker_window outcomes, once
              breaker_min_samples are in)--> OPEN
    OPEN   --(cool-down elapsed)--> HALF_OPEN        (computed from `now`, not stored)
    HALF_OPEN: one trial request at a time (claimed with ``on_attempt``)
        trial succeeds --> CLOSED (history and back-off reset)
        trial fails    --> OPEN again, cool-down doubled (up to breaker_open_max_s)
        trial never reports --> after breaker_trial_timeout_s another trial may start

The cool-down of the k-th consecutive opening is
``min(breaker_open_max_s, breaker_open_s * 2**(k-1))``.

How the shell drives it: ``allows(peer, now=)`` is a pure read (``choose_route`` uses
it to filter); just before sending, ``on_attempt(peer, now=)`` claims the half-open
trial (it returns False if another caller claimed it first); then
``record_success`` / ``record_failure``. A busy answer (``BackendBusy``) is not a
failure: the peer is healthy and said so at once.

Bounds: peer ids come from gossip, so the table holds at most ``breaker_max_peers``
entries; the least recently updated is evicted first (forgetting a breaker only means
the peer gets a fresh chance).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, replace

from mesh.routing.config import RoutingConfig


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class _Entry:
    consecutive_failures: int = 0
    outcomes: tuple[bool, ...] = ()  # last breaker_window outcomes, True = failure
    opens: int = 0  # consecutive openings without a close (drives the back-off)
    open_until: float | None = None  # None: closed; else open until then, half-open after
    trial_started: float | None = None  # a half-open trial in flight since then


class BreakerBook:
    def __init__(self, *, cfg: RoutingConfig) -> None:
        self.cfg = cfg
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    # -- reads (pure) -----------------------------------------------------------------

    def state(self, peer_id: str, *, now: float) -> BreakerState:
        e = self._entries.get(peer_id)
        if e is None or e.open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < e.open_until else BreakerState.HALF_OPEN

    def allows(self, peer_id: str, *, now: float) -> bool:
        """A request may be sent to the peer now: closed, or half-open with no trial in
        flight (or the trial in flight has timed out)."""
        st = self.state(peer_id, now=now)
        if st is BreakerState.CLOSED:
            return True
        if st is BreakerState.OPEN:
            return False
        return self._trial_free(self._entries[peer_id], now)

    def states(self, *, now: float) -> dict[str, BreakerState]:
        """Every peer with a breaker that is not closed (for status pages and metrics)."""
        out = {}
        for pid in self._entries:
            st = self.state(pid, now=now)
            if st is not BreakerState.CLOSED:
                out[pid] = st
        return out

    def cooldown_s(self, opens: int) -> float:
        """Cool-down of the ``opens``-th consecutive opening (1-based)."""
        return min(self.cfg.breaker_open_max_s, self.cfg.breaker_open_s * 2 ** max(0, opens - 1))

    # -- updates ----------------------------------------------------------------------

    def on_attempt(self, peer_id: str, *, now: float) -> bool:
        """Called just before sending to the peer. Claims the half-open trial; returns
        whether the attempt may go ahead (False: open, or another trial in flight)."""
        st = self.state(peer_id, now=now)
        if st is BreakerState.CLOSED:
            return True
        if st is BreakerState.OPEN:
            return False
        e = self._entries[peer_id]
        if not self._trial_free(e, now):
            return False
        self._put(peer_id, replace(e, trial_started=now))
        return True

    def record_success(self, peer_id: str, *, now: float) -> None:
        e = self._entries.get(peer_id)
        if e is None:
            e = _Entry()
        if e.open_until is not None:
            if now < e.open_until:  # a late answer from before it opened: the cool-down stands
                return
            self._put(peer_id, _Entry())  # the half-open trial passed: closed, history reset
            return
        self._put(peer_id, replace(e, consecutive_failures=0, outcomes=self._push(e.outcomes, False)))

    def record_failure(self, peer_id: str, *, now: float) -> None:
        cfg = self.cfg
        e = self._entries.get(peer_id) or _Entry()
        if e.open_until is not None:
            if now < e.open_until:  # already open: nothing more to learn
                return
            opens = e.opens + 1  # the half-open trial failed: re-open, longer
            self._put(peer_id, _Entry(opens=opens, open_until=now + self.cooldown_s(opens)))
            return
        outcomes = self._push(e.outcomes, True)
        consecutive = e.consecutive_failures + 1
        rate_open = len(outcomes) >= cfg.breaker_min_samples and sum(outcomes) / len(outcomes) >= cfg.breaker_failure_rate
        if consecutive >= cfg.breaker_failures or rate_open:
            opens = e.opens + 1
            self._put(peer_id, _Entry(opens=opens, open_until=now + self.cooldown_s(opens)))
        else:
            self._put(peer_id, replace(e, consecutive_failures=consecutive, outcomes=outcomes))

    def forget(self, peer_id: str) -> None:
        self._entries.pop(peer_id, None)

    # -- internals --------------------------------------------------------------------

    def _trial_free(self, e: _Entry, now: float) -> bool:
        return e.trial_started is None or now - e.trial_started >= self.cfg.breaker_trial_timeout_s

    def _push(self, outcomes: tuple[bool, ...], failed: bool) -> tuple[bool, ...]:
        return (outcomes + (failed,))[-self.cfg.breaker_window :]

    def _put(self, peer_id: str, e: _Entry) -> None:
        self._entries[peer_id] = e
        self._entries.move_to_end(peer_id)
        while len(self._entries) > self.cfg.breaker_max_peers:
            self._entries.popitem(last=False)
