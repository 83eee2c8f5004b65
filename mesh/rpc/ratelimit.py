"""A token bucket per caller: an HTTP API key id (or a remote address for keyless
callers), an RPC sender's peer id.

Each bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes
one. ``take(key, now=...)`` returns 0.0 when the request may go on, else the seconds
until a token will be there (what ``Retry-After`` says). The clock is passed in; nothing
here reads time.

Bounded: at most ``max_keys`` buckets. Past that, buckets that have refilled to full
are dropped first (a full bucket is the same as no bucket), then the least recently
used; a caller whose bucket was dropped that way starts again with a full burst, which
errs on the side of serving (the limit protects the peer's queue, and the backend's own
bounded queue still says "busy" behind it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, *, rate_per_s: float, burst: int, max_keys: int = 10_000) -> None:
        if rate_per_s < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s >= 0, burst >= 1 and max_keys >= 1")
        self.rate_per_s = rate_per_s  # 0: no limit
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, b: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - b.updated)  # a clock stepping back refills nothing
        return min(float(self.burst), b.tokens + elapsed * self.rate_per_s)

    def take(self, key: str, *, now: float) -> float:
        """Take one token from ``key``'s bucket: 0.0 if taken, else seconds to wait."""
        if not self.enabled:
            return 0.0
        b = self._buckets.get(key)
        if b is None:
            b = _Bucket(tokens=float(self.burst), updated=now)
            self._buckets[key] = b
            self._evict(now, keep=key)
        else:
            self._buckets.move_to_end(key)
        b.tokens = self._refilled(b, now)
        b.updated = max(b.updated, now)
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate_per_s

    def _evict(self, now: float, *, keep: str) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        for k in [k for k, b in self._buckets.items() if k != keep and self._refilled(b, now) >= self.burst]:
            del self._buckets[k]
        while len(self._buckets) > self.max_keys:
            oldest = next(iter(self._buckets))
            if oldest == keep:  # cannot happen (keep was just added at the end) unless max_keys is 0
                break
            del self._buckets[oldest]


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` is whole seconds (RFC 9110 section 10.2.3): round up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
