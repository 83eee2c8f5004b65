"""Members' load (requests running and waiting), carried outside the signed record.

A member's load changes whenever a request starts or ends. Re-signing its member record
for each change (and spreading a ~600-byte record through the transmit-limited news
queue) made load views stale at scale, so load travels on its own, the way SWIM
piggybacks membership news on probes and memberlist/Serf carry small per-node state
beside them:

* **First-hand.** Every gossip message carries its sender's own ``Load``
  (``[seq, running, waiting]``, a dozen bytes). The signed RPC envelope already proves
  who sent it, so it needs no signature of its own.
* **Second-hand.** Values about others (``LoadNews``) ride in pings, acks, ping-reqs and
  gossip rounds, at most ``load_piggyback_max`` per message, the least-sent and then the
  newest first (memberlist's queue order); each is passed on ``limit`` times
  (``O(log n)``), then dropped. Only a value newer than the one held is passed on.
* **Versions.** ``seq`` is the owner's: ``max(previous + 1, its clock in ms)``. It grows
  within a life and, since members' clocks agree within the envelope's timestamp window,
  across restarts too. A value replaces the held one only if its ``seq`` is higher, so
  older never overwrites newer, whatever order datagrams arrive in.

Second-hand values are not signed by their owner, so a member could lie about another's
load. Two rules bound the damage: a value whose ``seq`` is more than ``future_s`` ahead
of this peer's clock is refused (a liar cannot pin a load for long), and a member that
hears a value about itself at or above its own ``seq`` that is not its own steps its
``seq`` above it and spreads its true load at once (SWIM's refutation, for load).

``LoadBook`` holds these rules and nothing else: no sockets, no clock (``now`` is passed
in), no randomness. ``Swim`` calls ``learn`` for what it receives, ``take`` for what it
sends and ``set_own`` when the shell reports a change.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass

from mesh.gossip.errors import GossipError, GossipReason

MAX_LOAD_COUNT = 10**6  # running or waiting requests (as mesh.gossip.view.MAX_COUNT)
MAX_SEQ = (1 << 63) - 1


def _ms(now: float) -> int:
    return int(now * 1000)


@dataclass(frozen=True, slots=True)
class Load:
    """One member's load at version ``seq`` (its owner's clock in ms, or just above)."""

    seq: int
    running: int
    waiting: int

    def same_value(self, other: Load) -> bool:
        return self.running == other.running and self.waiting == other.waiting

    def to_wire(self) -> list[int]:
        return [self.seq, self.running, self.waiting]

    @classmethod
    def from_wire(cls, raw: object) -> Load:
        """``[seq, running, waiting, ...]`` (trailing elements ignored); ``GossipError``
        with reason ``BAD_LOAD`` for anything else."""
        if not isinstance(raw, list) or len(raw) < 3:
            raise GossipError(GossipReason.BAD_LOAD, "a load is [seq, running, waiting]")
        seq, running, waiting = raw[0], raw[1], raw[2]
        if (type(seq) is int and type(running) is int and type(waiting) is int  # never a bool
                and 0 <= seq <= MAX_SEQ and 0 <= running <= MAX_LOAD_COUNT and 0 <= waiting <= MAX_LOAD_COUNT):
            return cls(seq, running, waiting)
        raise GossipError(GossipReason.BAD_LOAD, f"load must be [seq, running, waiting]: integers in 0..{MAX_SEQ}, "
                          f"0..{MAX_LOAD_COUNT}, 0..{MAX_LOAD_COUNT}")


class Verdict(enum.Enum):
    """What ``LoadBook.learn`` did with a value."""

    NEWER = "newer"  # held and queued to be passed on
    OLD = "old"  # not newer than the value held: ignored
    AHEAD = "ahead"  # seq too far ahead of this peer's clock: refused
    UNKNOWN = "unknown"  # about a peer id that is not a member: ignored (no memory for strangers)
    REFUTED = "refuted"  # about this peer and not its own: its seq stepped above it


@dataclass(slots=True)
class _Relay:
    load: Load
    transmits: int
    order: int  # when it was learned; newer first among equally sent values

    def key(self, peer_id: bytes) -> tuple:
        return (self.transmits, -self.order, peer_id)


@dataclass(frozen=True, slots=True)
class Held:
    load: Load
    heard_at: float  # this peer's clock when it learned the value


class LoadBook:
    """What this peer knows of each member's load, and which of it to pass on.

    ``max_relay`` bounds the values waiting to be passed on (past it the most sent, then
    the oldest, are dropped); held values exist only for members (``is_member``), so the
    table's own bound covers them, and ``retain`` drops those of departed members.
    """

    def __init__(self, self_id: bytes, *, now: float, future_s: float, max_relay: int) -> None:
        self.self_id = self_id
        self.own = Load(_ms(now), 0, 0)
        self.own_pending = False  # own load changed since the last gossip round carried it
        self._future_ms = int(future_s * 1000)
        self._max_relay = max_relay
        self._held: dict[bytes, Held] = {}
        self._relay: dict[bytes, _Relay] = {}
        self._order: list[tuple] = []  # _Relay.key, sorted: what take() sends first
        self._learned = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def pending(self) -> bool:
        """Whether there is load news to send (values to pass on, or a fresh own load)."""
        return self.own_pending or bool(self._relay)

    @property
    def relay_size(self) -> int:
        return len(self._relay)

    def get(self, peer_id: bytes) -> Held | None:
        return self._held.get(peer_id)

    def set_own(self, running: int, waiting: int, now: float) -> bool:
        """This peer's load now; True when it changed (a new version to spread)."""
        if running == self.own.running and waiting == self.own.waiting:
            return False
        self.own = Load(max(self.own.seq + 1, _ms(now)), running, waiting)
        self.own_pending = True
        return True

    def learn(self, peer_id: bytes, load: Load, now: float, *, is_member: Callable[[bytes], bool]) -> Verdict:
        """Apply one value about ``peer_id`` (first-hand when ``peer_id`` sent it)."""
        if load.seq > _ms(now) + self._future_ms:
            return Verdict.AHEAD
        if peer_id == self.self_id:
            if load.seq > self.own.seq or (load.seq == self.own.seq and not load.same_value(self.own)):
                self.own = Load(load.seq + 1, self.own.running, self.own.waiting)
                self.own_pending = True
                return Verdict.REFUTED
            return Verdict.OLD
        if not is_member(peer_id):
            return Verdict.UNKNOWN
        held = self._held.get(peer_id)
        if held is not None and load.seq <= held.load.seq:
            return Verdict.OLD
        self._held[peer_id] = Held(load, now)
        self._queue(peer_id, load)
        return Verdict.NEWER

    def take(self, max_items: int, limit: int) -> list[tuple[bytes, Load]]:
        """Values to add to one message: the least sent first, then the newest. Each
        counts as one transmission; a value sent ``limit`` times is dropped."""
        out: list[tuple[bytes, Load]] = []
        for key in self._order[:max_items]:
            out.append((key[2], self._relay[key[2]].load))
        del self._order[: len(out)]
        for peer_id, _ in out:
            r = self._relay[peer_id]
            r.transmits += 1
            if r.transmits >= limit:
                del self._relay[peer_id]
            else:
                bisect.insort(self._order, r.key(peer_id))
        return out

    def retain(self, is_member: Callable[[bytes], bool]) -> None:
        """Forget the load of peers that are no longer members."""
        for peer_id in [p for p in self._held if not is_member(p)]:
            del self._held[peer_id]
            self._unqueue(peer_id)

    def _queue(self, peer_id: bytes, load: Load) -> None:
        self._unqueue(peer_id)
        self._learned += 1
        r = _Relay(load, 0, self._learned)
        self._relay[peer_id] = r
        bisect.insort(self._order, r.key(peer_id))
        while len(self._relay) > self._max_relay:
            victim = self._order.pop()[2]  # the most sent, then the oldest
            del self._relay[victim]

    def _unqueue(self, peer_id: bytes) -> None:
        old = self._relay.pop(peer_id, None)
        if old is not None:
            i = bisect.bisect_left(self._order, old.key(peer_id))
            del self._order[i]
