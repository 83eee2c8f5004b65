"""``SessionAffinity``: session id -> the peer that served it, so its prompt cache is reused.

A bounded LRU table. ``get`` is a pure read (``choose_route`` calls it and decides
whether the peer is still a healthy fit); ``remember`` records the peer that served a
session's request and makes that session the most recently used; beyond
``max_sessions`` the least recently used session is forgotten. ``forget_peer`` drops
every session on a peer that failed, so the next request of those sessions is routed
afresh (and then remembered on its new peer).

Session ids come from callers, possibly over HTTP, hence the bound.
"""

from __future__ import annotations

from collections import OrderedDict


class SessionAffinity:
    def __init__(self, *, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self._peers: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, session_id: str | None) -> str | None:
        """The peer remembered for the session (does not change recency)."""
        if session_id is None:
            return None
        return self._peers.get(session_id)

    def remember(self, session_id: str | None, peer_id: str) -> None:
        """The session was served by ``peer_id`` (now its most recently used entry)."""
        if session_id is None:
            return
        self._peers[session_id] = peer_id
        self._peers.move_to_end(session_id)
        while len(self._peers) > self.max_sessions:
            self._peers.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._peers.pop(session_id, None)

    def rename_peer(self, old: str, new: str) -> int:
        """Peer ``old`` is ``new`` now (``mesh rotate``): its sessions stay with it."""
        moved = [s for s, p in self._peers.items() if p == old]
        for s in moved:
            self._peers[s] = new
        return len(moved)

    def forget_peer(self, peer_id: str) -> int:
        """Forget every session on a peer that failed; returns how many."""
        gone = [s for s, p in self._peers.items() if p == peer_id]
        for s in gone:
            del self._peers[s]
        return len(gone)
