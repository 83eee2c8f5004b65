"""``BytePacer``: a pull's bandwidth cap (``--pull-rate``), shared by its workers.

Before asking for ``n`` bytes a worker calls ``reserve(n, now)`` and sleeps the seconds it
returns. The pacer keeps the time at which the bytes reserved so far will have been
allowed; a burst of ``burst_s`` seconds' worth may run ahead of it, so a pull at the cap
does not stall on every piece. Pure: the clock is passed in. A rate of 0 means no cap.
"""

from __future__ import annotations


class BytePacer:
    def __init__(self, rate_bytes_per_s: float, *, burst_s: float = 1.0) -> None:
        if rate_bytes_per_s < 0 or burst_s < 0:
            raise ValueError("the rate and the burst cannot be negative")
        self.rate = rate_bytes_per_s
        self.burst_s = burst_s
        self._allowed_until: float | None = None  # when the bytes reserved so far are allowed

    def reserve(self, n: int, now: float) -> float:
        """Reserve ``n`` bytes; the seconds to wait before fetching them (0.0: at once)."""
        if self.rate <= 0:
            return 0.0
        start = now - self.burst_s if self._allowed_until is None else max(self._allowed_until, now - self.burst_s)
        self._allowed_until = start + n / self.rate
        return max(0.0, self._allowed_until - now)
