"""The dashboard's charts (mesh.http.timeline): the last minutes of requests in time
buckets, per answering peer and for the whole peer. Pure: records and times passed in."""

from __future__ import annotations

import pytest

from mesh.http.recent import RequestRecord
from mesh.http.timeline import Timeline


def rec(t: float, peer: str | None = "p1", *, tokens: int = 20, latency: float = 1.0, ttft: float = 0.5,
        outcome: str = "ok", escalated: bool = False) -> RequestRecord:
    return RequestRecord(time=t, entry="rpc", prompt="x", outcome=outcome, latency_s=latency, ttft_s=ttft,
                         peer=peer, tokens=tokens, escalated=escalated)


def test_each_bucket_has_its_peers_speed_and_median_latency():
    tl = Timeline(bucket_s=10, buckets=3)
    tl.add(rec(100, tokens=20, latency=1.0, ttft=0.5))  # 20 tokens in 0.5 s of generating
    tl.add(rec(105, tokens=10, latency=3.0, ttft=0.5))  # 10 in 2.5 s
    tl.add(rec(112, "p2", tokens=8, latency=0.6, ttft=0.2, escalated=True))
    snap = tl.snapshot(now=115)
    assert snap["times"] == [90, 100, 110] and snap["requests"] == [0, 2, 1] and snap["escalated"] == [0, 0, 1]
    assert snap["peers"]["p1"]["tokens_per_s"] == [None, 10.0, None]  # 30 tokens / 3.0 s
    assert snap["peers"]["p1"]["latency_p50_s"] == [None, 2.0, None]
    assert snap["peers"]["p2"]["tokens_per_s"] == [None, None, 20.0]


def test_failures_count_but_have_no_speed_and_old_buckets_go():
    tl = Timeline(bucket_s=10, buckets=3)
    tl.add(rec(100, None, outcome="no_answer", tokens=0))
    assert tl.snapshot(now=100)["failed"][-1] == 1 and tl.snapshot(now=100)["peers"] == {}
    tl.add(rec(135))  # three buckets later: the one at 100 is dropped
    assert 10 not in tl._data and len(tl._data) == 1
    assert tl.snapshot(now=135)["requests"] == [0, 0, 1]


def test_more_answering_peers_than_kept_share_other():
    tl = Timeline(bucket_s=10, buckets=2, max_peers=2)
    for p in ("a", "b", "c", "d"):
        tl.add(rec(100, p))
    assert set(tl.snapshot(now=100)["peers"]) == {"a", "b", "other"}


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        Timeline(bucket_s=0)
