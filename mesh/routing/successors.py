"""Peers that rotated their keys (``mesh rotate``) come back under a new peer id.

A rotating peer's last record under its old id says ``left`` with ``rotating: true`` in
its meta; its successor's certificate names the old key (the authority's word), which
is how this peer learns the pair (``Successors.learn``). Between the two — while the
peer drains its calls in flight and binds its new keys, usually well under a second —
a prompt only that peer could answer would find no candidate; the router waits for the
successor instead (``awaiting``), up to ``ROTATION_WAIT_S`` after the old id left.

Pure: the member view (``Membership.view()``) is passed in.
"""

from __future__ import annotations

from collections import OrderedDict

from mesh.gossip.view import MemberView

ROTATION_WAIT_S = 10.0  # wait this long at most for a rotating peer to come back under its new id
MAX_SUCCESSORS = 1024


class Successors:
    """Old peer id -> new peer id, for peers that rotated (bounded, oldest dropped)."""

    def __init__(self, *, max_entries: int = MAX_SUCCESSORS) -> None:
        self.max_entries = max_entries
        self._new: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._new)

    def learn(self, old: str, new: str) -> None:
        self._new[old] = new
        self._new.move_to_end(old)
        while len(self._new) > self.max_entries:
            self._new.popitem(last=False)

    def current(self, peer_id: str) -> str:
        """The id ``peer_id`` goes by now (following several rotations)."""
        seen = {peer_id}
        while peer_id in self._new and self._new[peer_id] not in seen:
            peer_id = self._new[peer_id]
            seen.add(peer_id)
        return peer_id

    def awaiting(self, view: list[MemberView], *, wait_s: float = ROTATION_WAIT_S) -> list[str]:
        """Old ids of members that left to rotate less than ``wait_s`` ago and whose
        successor is not alive in ``view`` yet."""
        alive = {m.peer_id for m in view if m.state == "alive"}
        return [
            m.peer_id for m in view
            if m.state == "left" and m.meta is not None and m.meta.rotating and m.since_s < wait_s
            and self.current(m.peer_id) not in alive
        ]
