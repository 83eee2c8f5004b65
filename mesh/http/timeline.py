"""The last minutes of requests entered at this peer, in time buckets, for the dashboard's
charts: per answering peer, tokens per second and latency; for the whole peer, requests
and escalations. Pure: the caller passes each record and the time; memory is bounded by
``buckets`` x the peers seen in them (at most ``max_peers`` per bucket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mesh.http.recent import RequestRecord

BUCKET_S = 15.0
BUCKETS = 40  # ten minutes
MAX_PEERS = 64  # per bucket; more answering peers than this share "other"


@dataclass
class _PeerBucket:
    tokens: int = 0
    generating_s: float = 0.0  # time from first token to the end, summed over answers
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Bucket:
    start: float
    requests: int = 0
    escalated: int = 0
    failed: int = 0
    peers: dict[str, _PeerBucket] = field(default_factory=dict)


class Timeline:
    def __init__(self, *, bucket_s: float = BUCKET_S, buckets: int = BUCKETS, max_peers: int = MAX_PEERS) -> None:
        if bucket_s <= 0 or buckets < 1 or max_peers < 1:
            raise ValueError("bucket_s > 0, buckets >= 1 and max_peers >= 1")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self.max_peers = max_peers
        self._data: dict[int, _Bucket] = {}

    def _index(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def add(self, rec: RequestRecord) -> None:
        i = self._index(rec.time)
        b = self._data.get(i)
        if b is None:
            b = self._data[i] = _Bucket(start=i * self.bucket_s)
            for old in [k for k in self._data if k <= i - self.buckets]:
                del self._data[old]
        b.requests += 1
        b.escalated += int(rec.escalated)
        b.failed += int(rec.outcome != "ok")
        if rec.outcome != "ok" or not rec.peer:
            return
        who = rec.peer if rec.peer in b.peers or len(b.peers) < self.max_peers else "other"
        p = b.peers.setdefault(who, _PeerBucket())
        p.tokens += rec.tokens
        if rec.ttft_s is not None and rec.latency_s > rec.ttft_s:
            p.generating_s += rec.latency_s - rec.ttft_s
        p.latencies.append(rec.latency_s)

    def snapshot(self, now: float) -> dict[str, Any]:
        """``times``: each bucket's start, oldest first, the current bucket last;
        ``requests``, ``escalated``, ``failed``: counts per bucket; ``peers``: per
        answering peer, ``tokens_per_s`` and ``latency_p50_s`` per bucket (None where it
        answered nothing)."""
        last = self._index(now)
        idx = list(range(last - self.buckets + 1, last + 1))
        buckets = [self._data.get(i) for i in idx]
        names = sorted({p for b in buckets if b for p in b.peers})
        peers = {}
        for name in names:
            tps, lat = [], []
            for b in buckets:
                p = b.peers.get(name) if b else None
                tps.append(round(p.tokens / p.generating_s, 2) if p and p.generating_s > 0 else None)
                lat.append(round(_median(p.latencies), 4) if p and p.latencies else None)
            peers[name] = {"tokens_per_s": tps, "latency_p50_s": lat}
        return {
            "bucket_s": self.bucket_s,
            "times": [i * self.bucket_s for i in idx],
            "requests": [b.requests if b else 0 for b in buckets],
            "escalated": [b.escalated if b else 0 for b in buckets],
            "failed": [b.failed if b else 0 for b in buckets],
            "peers": peers,
        }


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
