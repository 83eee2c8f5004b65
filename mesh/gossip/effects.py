"""What the SWIM core asks its shell to do, or tells it happened.

``Swim`` never touches a socket or a clock; each call returns a list of these:

* ``Send``: deliver ``data`` as one datagram (best effort; loss is expected). Send it in
  the signed envelope, to ``peer_id`` when given, at one of ``addresses``.
* ``MemberChanged``: a member's status changed (``old`` None: a new member; ``new``
  None: its entry was reclaimed). For the CLI, logs, the router's candidate list.
* ``MemberUpdated``: a member's record was replaced without a status change (new
  meta or addresses; load refreshes arrive as these about once a second each).

Timers are not effects: after every call the shell reads ``Swim.next_tick_at`` and calls
``tick(now)`` again no later than that.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.gossip.member import Status


@dataclass(frozen=True)
class Send:
    peer_id: bytes | None  # None: a seed address whose peer is not known yet
    addresses: tuple[str, ...]  # where to reach it; empty: use the route the transport already has
    data: bytes
    kind: str  # message type name ("ping", "ack", ...): for metrics and fault injection

    def __repr__(self) -> str:
        who = self.peer_id.hex()[:8] if self.peer_id else "?"
        return f"Send({self.kind} -> {who} {self.addresses[:1]}, {len(self.data)} B)"


@dataclass(frozen=True)
class MemberChanged:
    peer_id: bytes
    name: str
    old: Status | None
    new: Status | None
    incarnation: int


@dataclass(frozen=True)
class MemberUpdated:
    peer_id: bytes
    incarnation: int
    version: int


Effect = Send | MemberChanged | MemberUpdated
