"""Counts of refused frames, by reason. Read by `info` and, later, /metrics."""

from __future__ import annotations

from collections import Counter

from mesh.rpc.envelope import RejectReason


class RejectionCounter:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, reason: RejectReason) -> None:
        self._counts[reason.value] += 1

    def snapshot(self) -> dict[str, int]:
        return {r.value: self._counts.get(r.value, 0) for r in RejectReason}

    @property
    def total(self) -> int:
        return sum(self._counts.values())
