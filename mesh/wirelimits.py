"""Bounds shared by every decoder of network input (envelopes, gossip messages)."""

from __future__ import annotations

from typing import Any


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when maps/lists in ``value`` nest deeper than ``limit`` (iterative: a hostile
    document cannot exhaust the Python stack)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            if d > limit:
                return True
            stack.extend((x, d + 1) for x in v)
    return False
