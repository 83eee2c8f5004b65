"""A clock that moves only when told to, for testing time-dependent policy without sleeping."""

from __future__ import annotations


class ManualClock:
    """Callable like ``time.time``; ``advance(s)`` moves it forward."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds
