"""Load churn for the simulator: requests start and end at members, and how stale others' views are.

``RequestChurn`` drives a ``SimNetwork``: requests arrive at random members (a Poisson
process, either at a fixed rate for the whole mesh or at a fixed rate per member), each
runs for an exponentially distributed time, and every start and end changes that
member's load (``running`` up to ``parallel``, the rest ``waiting``), which it reports
with ``SimNetwork.update_load``. It keeps each member's true load history, so it can say
how stale another member's view of it is:

* **age** of an observer's view of a subject, at an instant: 0 when the observer holds
  the subject's true load, else the time since the value it holds stopped being true
  (``age``; divide by the period for periods).
* **delivery delay** of a change: for a tracked change, the time until each observer
  holds that version or a later one (``track`` and ``delays``).

Typical use::

    churn = RequestChurn(net, ids, rng=random.Random(1), rate_per_s=10 / period,
                         mean_duration_s=6 * period)
    churn.run(30 * period)                      # warm up
    churn.track(20)                             # follow the next 20 changes to every observer
    churn.run(30 * period, sample=lambda: ages.extend(churn.sample_ages(200)))
    delays = churn.delays()
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.testing.network import SimNetwork


@dataclass
class _Tracked:
    subject: bytes
    seq: int
    at: float
    waiting_for: set[bytes]
    delays: list[float] = field(default_factory=list)


class RequestChurn:
    def __init__(
        self,
        net: SimNetwork,
        ids: list[bytes],
        *,
        rng: random.Random,
        rate_per_s: float,
        mean_duration_s: float,
        per_member: bool = False,
        parallel: int = 2,
        poll_s: float | None = None,
    ) -> None:
        """``rate_per_s``: request arrivals per second for the whole mesh, or for each
        member when ``per_member``. ``poll_s``: how often tracked changes are checked
        (the resolution of ``delays``; default a tenth of a protocol period)."""
        self.net = net
        self.ids = list(ids)
        self.rng = rng
        self.rate_per_s = rate_per_s * (len(ids) if per_member else 1)
        self.mean_duration_s = mean_duration_s
        self.parallel = parallel
        self.poll_s = poll_s or net.cfg.probe_interval_s / 10
        self.active = dict.fromkeys(self.ids, 0)
        self.history: dict[bytes, list[tuple[float, tuple[int, int]]]] = {
            p: [(net.now, self._value(p))] for p in self.ids
        }
        self.changes = 0
        self._ends: list[tuple[float, int, bytes]] = []
        self._n = 0
        self._next_arrival = net.now + rng.expovariate(self.rate_per_s)
        self._to_track = 0
        self._tracked: list[_Tracked] = []

    def _value(self, pid: bytes) -> tuple[int, int]:
        a = self.active[pid]
        return (min(a, self.parallel), max(0, a - self.parallel))

    def _change(self, pid: bytes, delta: int) -> None:
        self.active[pid] += delta
        value = self._value(pid)
        self.history[pid].append((self.net.now, value))
        self.changes += 1
        self.net.update_load(pid, *value)
        if self._to_track and self.net.peers[pid].running:
            self._to_track -= 1
            seq = self.net.peers[pid].swim.own_load.seq
            observers = {o for o in self.net.running() if o != pid}
            self._tracked.append(_Tracked(pid, seq, self.net.now, observers))

    def run(self, seconds: float, *, sample: Callable[[], None] | None = None, sample_every_s: float = 0.0) -> None:
        """Advance the network ``seconds``, starting and ending requests on the way;
        call ``sample()`` every ``sample_every_s`` (when given)."""
        end = self.net.now + seconds
        next_poll = self.net.now + self.poll_s
        next_sample = self.net.now + sample_every_s if sample else float("inf")
        while True:
            t_end = self._ends[0][0] if self._ends else float("inf")
            t = min(self._next_arrival, t_end, next_poll, next_sample, end)
            if t > self.net.now:
                self.net.run(t - self.net.now)
            if t == end:
                break
            if t == self._next_arrival:
                pid = self.ids[self.rng.randrange(len(self.ids))]
                self._n += 1
                heapq.heappush(self._ends, (t + self.rng.expovariate(1 / self.mean_duration_s), self._n, pid))
                self._next_arrival = t + self.rng.expovariate(self.rate_per_s)
                self._change(pid, +1)
            elif t == t_end:
                _, _, pid = heapq.heappop(self._ends)
                self._change(pid, -1)
            elif t == next_poll:
                next_poll = t + self.poll_s
                self._poll()
            else:
                next_sample = t + sample_every_s
                sample()  # type: ignore[misc]

    # --- staleness -----------------------------------------------------------------

    def held(self, observer: bytes, subject: bytes) -> tuple[int, int]:
        """The load ``observer`` holds for ``subject`` (the starting 0/0 when it learned none)."""
        load = self.net.peers[observer].swim.load_of(subject)
        return (0, 0) if load is None else (load.running, load.waiting)

    def age(self, observer: bytes, subject: bytes) -> float:
        """Seconds since the value ``observer`` holds for ``subject`` stopped being true (0: true now)."""
        held = self.held(observer, subject)
        hist = self.history[subject]
        if hist[-1][1] == held:
            return 0.0
        for i in range(len(hist) - 2, -1, -1):
            if hist[i][1] == held:
                return self.net.now - hist[i + 1][0]
        return self.net.now - hist[0][0]

    def sample_ages(self, k: int) -> list[float]:
        """Ages (seconds) of ``k`` random (observer, subject) pairs of running members."""
        live = [p for p in self.ids if self.net.peers[p].running]
        out = []
        for _ in range(k):
            o, s = self.rng.sample(live, 2)
            out.append(self.age(o, s))
        return out

    def track(self, n: int) -> None:
        """Follow the next ``n`` load changes until every running member holds them."""
        self._to_track += n

    def _poll(self) -> None:
        now = self.net.now
        for tr in self._tracked:
            if not tr.waiting_for:
                continue
            done = []
            for o in tr.waiting_for:
                peer = self.net.peers[o]
                load = peer.swim.load_of(tr.subject) if peer.running else None
                if not peer.running or (load is not None and load.seq >= tr.seq):
                    done.append(o)
                    if peer.running:
                        tr.delays.append(now - tr.at)
            tr.waiting_for.difference_update(done)

    def delays(self) -> tuple[list[float], int]:
        """Delivery delays (seconds) of tracked changes to observers that got them, and the
        number of (change, observer) pairs still waiting."""
        return [d for tr in self._tracked for d in tr.delays], sum(len(tr.waiting_for) for tr in self._tracked)
