"""One suspicion timer with Lifeguard's confirmations (memberlist ``suspicion.go``).

A suspicion starts at ``max_s`` and shrinks toward ``min_s`` as other members
independently report the same suspect (``confirm``). The member that raised the
suspicion does not count: our own suspicion gossiped back to us is not independent.
Pure data: the caller asks ``deadline`` and compares it with its own ``now``.
"""

from __future__ import annotations

from mesh.gossip.timing import remaining_suspicion_s


class Suspicion:
    __slots__ = ("_confirmers", "incarnation", "k", "max_s", "min_s", "start")

    def __init__(self, *, incarnation: int, start: float, first_from: bytes, k: int, min_s: float, max_s: float):
        self.incarnation = incarnation
        self.start = start
        self.k = max(0, k)
        self.min_s = min_s
        self.max_s = max_s
        self._confirmers = {first_from}

    @property
    def confirmations(self) -> int:
        return len(self._confirmers) - 1

    def confirm(self, from_id: bytes) -> bool:
        """Count an independent suspicion; ``True`` if it was new (worth rebroadcasting)."""
        if self.confirmations >= self.k or from_id in self._confirmers:
            return False
        self._confirmers.add(from_id)
        return True

    @property
    def deadline(self) -> float:
        return self.start + remaining_suspicion_s(self.confirmations, self.k, 0.0, self.min_s, self.max_s)
