"""The session prompt cache's bookkeeping (mesh.inference.session_cache): when to restore,
LRU within a byte budget, counters; and the session id on the request and the wire."""

from __future__ import annotations

import pytest

from mesh.api import ask_args, request_from_ask_args
from mesh.errors import ConfigError, InvalidRequest
from mesh.inference.backend import GenerationRequest
from mesh.inference.session_cache import (
    SessionCache,
    SessionCacheConfig,
    SessionState,
    common_prefix,
    stats_from_wire,
)


def state(tokens, size=100) -> SessionState:
    return SessionState(tuple(tokens), b"x" * size, size)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_restores_when_the_prompt_extends_the_cached_tokens_beyond_the_live_context():
    cache = SessionCache()
    cache.put("a", state([1, 2, 3, 4]))
    plan = cache.plan("a", [1, 2, 3, 4, 5, 6], live=[1, 2, 9])
    assert plan.restore is cache.get("a") and plan.keep == 4
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 0


def test_no_restore_when_the_live_context_already_holds_as_much():
    cache = SessionCache()
    cache.put("a", state([1, 2, 3, 4]))
    plan = cache.plan("a", [1, 2, 3, 4, 5], live=[1, 2, 3, 4, 7, 7])
    assert plan.restore is None
    assert cache.stats()["misses"] == 1


def test_a_diverging_prompt_keeps_only_the_shared_prefix_and_an_unknown_session_misses():
    cache = SessionCache()
    cache.put("a", state([1, 2, 3, 4]))
    plan = cache.plan("a", [1, 2, 8, 9], live=[])
    assert plan.restore is not None and plan.keep == 2
    assert cache.plan("a", [7, 8], live=[]).restore is None  # nothing shared
    assert cache.plan("b", [1, 2, 3, 4, 5], live=[]).restore is None
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 2


def test_at_least_one_prompt_token_is_left_to_evaluate():
    cache = SessionCache()
    cache.put("a", state([1, 2, 3, 4, 5]))
    plan = cache.plan("a", [1, 2, 3], live=[])  # a prompt the cached tokens already cover
    assert plan.keep == 2


def test_lru_eviction_within_the_byte_budget():
    cache = SessionCache(SessionCacheConfig(budget_bytes=250, max_sessions=10))
    cache.put("a", state([1]))
    cache.put("b", state([2]))
    cache.plan("a", [1, 5], live=[])  # a restore makes "a" the most recently used
    cache.put("c", state([3]))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.stats() == {"hits": 1, "misses": 0, "evictions": 1, "entries": 2, "bytes": 200, "budget_bytes": 250}


def test_replacing_a_sessions_state_counts_its_bytes_once():
    cache = SessionCache(SessionCacheConfig(budget_bytes=250, max_sessions=10))
    cache.put("a", state([1], size=100))
    cache.put("a", state([1, 2], size=150))
    assert cache.bytes == 150 and len(cache) == 1 and cache.evictions == 0


def test_entry_count_is_bounded_too():
    cache = SessionCache(SessionCacheConfig(budget_bytes=10**9, max_sessions=2))
    for s in "abc":
        cache.put(s, state([1]))
    assert len(cache) == 2 and cache.get("a") is None and cache.evictions == 1


def test_a_state_larger_than_the_budget_is_not_kept():
    cache = SessionCache(SessionCacheConfig(budget_bytes=150, max_sessions=10))
    cache.put("a", state([1], size=100))
    cache.put("a", state([1, 2], size=200))
    assert cache.get("a") is None and cache.bytes == 0


def test_off_keeps_nothing_and_never_restores():
    cache = SessionCache(SessionCacheConfig.off())
    cache.put("a", state([1]))
    assert len(cache) == 0 and cache.plan("a", [1, 2], live=[]).restore is None


def test_config_is_checked():
    with pytest.raises(ConfigError):
        SessionCacheConfig(budget_bytes=-1)
    with pytest.raises(ConfigError):
        SessionCacheConfig(max_sessions=0)


def test_counters_from_the_engine_are_checked():
    good = SessionCache().stats()
    assert stats_from_wire(good) == good
    assert stats_from_wire({**good, "hits": -1}) is None
    assert stats_from_wire({**good, "bytes": "many"}) is None
    assert stats_from_wire([1]) is None


def test_session_travels_in_ask_args_and_is_bounded():
    req = GenerationRequest.from_prompt("hi", session="conv-1")
    assert request_from_ask_args(ask_args(req)).session == "conv-1"
    assert "session" not in ask_args(GenerationRequest.from_prompt("hi"))
    for bad in ("", "s" * 129, 7):
        with pytest.raises(InvalidRequest):
            request_from_ask_args({**ask_args(req), "session": bad})
