"""The member table: entries by peer id, a live index for sampling, and tombstones.

Bounds (every entry here is fed by the network):

* ``max_members`` entries. An entry is created only by a record that passed
  ``verify_record`` (suspect/dead claims about unknown ids create nothing). When full,
  a new member evicts the dead or left entry that has been so the longest; with none
  to evict it is refused (``GossipReason.TABLE_FULL``): live members are never pushed
  out by newcomers.
* Tombstones: when a dead or left entry is reclaimed (after ``dead_reclaim_s``), its
  peer id and incarnation stay for ``tombstone_s`` so a late or replayed record of that
  life cannot resurrect a ghost; its owner, if alive, is told and refutes above it.
  Also capped at ``max_members`` (oldest dropped first).
* ``last_heard`` only for ids in the table.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator

from mesh.gossip.member import Member, Status


class MemberTable:
    def __init__(self, *, max_members: int) -> None:
        self.max_members = max_members
        self._members: dict[bytes, Member] = {}
        self._live: list[bytes] = []  # alive or suspect, in no order; for O(k) sampling
        self._live_pos: dict[bytes, int] = {}
        self._dead: dict[bytes, float] = {}  # dead (not left) ids -> since
        self._tombs: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # id -> (incarnation, until)
        self.last_heard: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, peer_id: bytes) -> bool:
        return peer_id in self._members

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def get(self, peer_id: bytes) -> Member | None:
        return self._members.get(peer_id)

    @property
    def n_live(self) -> int:
        return len(self._live)

    @property
    def live_ids(self) -> list[bytes]:
        """Alive or suspect ids, in no order. Read-only: the table owns this list."""
        return self._live

    def put(self, m: Member) -> None:
        pid = m.peer_id
        self._members[pid] = m
        if m.live:
            if pid not in self._live_pos:
                self._live_pos[pid] = len(self._live)
                self._live.append(pid)
        else:
            self._unlive(pid)
        if m.status is Status.DEAD:
            self._dead[pid] = m.since
        else:
            self._dead.pop(pid, None)

    def remove(self, peer_id: bytes, *, tombstone_until: float) -> Member | None:
        m = self._members.pop(peer_id, None)
        if m is None:
            return None
        self._unlive(peer_id)
        self._dead.pop(peer_id, None)
        self.last_heard.pop(peer_id, None)
        self._tombs.pop(peer_id, None)
        self._tombs[peer_id] = (m.incarnation, tombstone_until)
        while len(self._tombs) > self.max_members:
            self._tombs.popitem(last=False)
        return m

    def tombstone(self, peer_id: bytes) -> int | None:
        """The incarnation a reclaimed member died at, if it is still remembered."""
        t = self._tombs.get(peer_id)
        return None if t is None else t[0]

    def clear_tombstone(self, peer_id: bytes) -> None:
        self._tombs.pop(peer_id, None)

    def expire_tombstones(self, now: float) -> None:
        for pid in [p for p, (_, until) in self._tombs.items() if until <= now]:
            del self._tombs[pid]

    def has_room(self) -> bool:
        return len(self._members) < self.max_members

    def eviction_candidate(self) -> Member | None:
        """The entry a new member may replace when full: dead or left the longest. Live
        members are never evicted for newcomers (None: refuse the newcomer)."""
        gone = [m for m in self._members.values() if not m.live]
        return min(gone, key=lambda m: (m.since, m.peer_id)) if gone else None

    def sample_live(self, rng: random.Random, k: int, *, exclude: tuple[bytes, ...] = ()) -> list[bytes]:
        """Up to ``k`` distinct live members not in ``exclude``, uniformly at random."""
        return _sample(self._live, rng, k, exclude)

    def sample_gossip_targets(self, rng: random.Random, k: int, *, dead_since: float) -> list[bytes]:
        """Live members plus those dead since ``dead_since`` or later (so they can refute)."""
        recent = [p for p, t in self._dead.items() if t >= dead_since] if self._dead else []
        if not recent:
            return _sample(self._live, rng, k, ())
        return _sample(self._live + recent, rng, k, ())

    def dead_ids(self) -> list[bytes]:
        return list(self._dead)

    def _unlive(self, pid: bytes) -> None:
        i = self._live_pos.pop(pid, None)
        if i is None:
            return
        last = self._live.pop()
        if last != pid:
            self._live[i] = last
            self._live_pos[last] = i


def _sample(pool: list[bytes], rng: random.Random, k: int, exclude: tuple[bytes, ...]) -> list[bytes]:
    n = len(pool)
    if n <= k + len(exclude):
        candidates = [p for p in pool if p not in exclude]
        return candidates if len(candidates) <= k else rng.sample(candidates, k)
    out: list[bytes] = []
    seen: set[int] = set()
    while len(out) < k:  # at least k candidates remain, so this ends
        i = rng.randrange(n)
        if i in seen:
            continue
        seen.add(i)
        if pool[i] not in exclude:
            out.append(pool[i])
    return out
