"""``SessionCache``: each conversation's prompt state, kept in RAM between its turns.

A peer runs one model with one context (``parallel`` 1). llama.cpp reuses the part of
the context a new prompt shares with the previous request, so a conversation whose
turns follow one another is cheap; but as soon as another conversation comes between
two of its turns, the context holds the other one and the whole growing history is
evaluated again: time to first token grows with every turn. Sticky routing keeps a
session on one peer (``mesh.routing.affinity``); this cache is what makes that pay.

After a turn of a session (``GenerationRequest.session``), the model runner copies the
context's key/value state for that turn's tokens (prompt and answer) into a
``SessionState``; when the next turn of the same session arrives and its prompt shares
more tokens with the cached ones than with the live context, the runner restores the
state and llama.cpp evaluates only the tokens after the shared prefix (normally the new
user message). This module is the bookkeeping only, pure and bounded; the copying is
``mesh.inference.engine`` (``snapshot_sequence``, ``restore_sequence``).

- Bounded by bytes (``budget_bytes``) and by entries (``max_sessions``): session ids
  come from callers, possibly over HTTP. Least recently used entries go first; a state
  larger than the whole budget is not kept. ``budget_bytes`` 0 turns the cache off.
- Counters (``stats()``): ``hits`` (a session's state was restored), ``misses`` (a
  session's turn found no entry, or one that shares no more with its prompt than the
  live context already does), ``evictions`` (entries dropped for room), ``entries``,
  ``bytes``, ``budget_bytes``.
- A restored state gives the same tokens as evaluating the prompt from scratch: the
  key/value cells of a prefix depend on that prefix alone. Seeded requests still
  evaluate from scratch (the same seed gives the same text, bit for bit) and are never
  restored; they may leave a state for the session's next unseeded turn.
- The cached state is only ever used for a prompt that starts with the very same
  tokens, so it cannot leak one conversation into another's answer; what a caller who
  knows another's session id could learn is only timing (whether that session's
  history starts with the prompt it sent).

How the runner drives it::

    entry = cache.get(session)                       # no effect on recency or counters
    plan = cache.plan(session, prompt, live_tokens)  # counts a hit or a miss
    if plan.restore is not None: restore plan.restore, keep plan.keep tokens
    ... generate ...
    cache.put(session, SessionState(tokens, data))   # most recently used; may evict
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class SessionCacheConfig:
    budget_bytes: int = 256 * MIB  # RAM for cached states; 0 turns the cache off
    max_sessions: int = 64  # entries at most, whatever their size

    def __post_init__(self) -> None:
        for name in ("budget_bytes", "max_sessions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"session cache {name} must be a non-negative integer, got {v!r}")
        if self.max_sessions < 1:
            raise ConfigError("session cache max_sessions must be at least 1")

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    @classmethod
    def off(cls) -> "SessionCacheConfig":
        return cls(budget_bytes=0)


@dataclass(frozen=True)
class SessionState:
    """The context after a session's turn: the tokens its key/value cells hold (in
    order, from position 0) and the cells themselves, as llama.cpp copied them."""

    tokens: tuple[int, ...]
    data: Any  # a bytes-like buffer (llama.cpp's sequence state)
    size: int  # bytes of data


@dataclass(frozen=True)
class Plan:
    """What to do before generating: restore ``restore`` and keep its first ``keep``
    tokens (``restore`` None: generate on the live context as it is)."""

    restore: SessionState | None
    keep: int


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SessionCache:
    """Session id -> ``SessionState``, LRU within a byte budget (see the module docstring)."""

    def __init__(self, config: SessionCacheConfig | None = None) -> None:
        self.config = config if config is not None else SessionCacheConfig()
        self._entries: OrderedDict[str, SessionState] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, session: str) -> SessionState | None:
        """The session's state, if kept (changes neither recency nor counters)."""
        return self._entries.get(session)

    def plan(self, session: str, prompt: Sequence[int], live: Sequence[int]) -> Plan:
        """Whether to restore the session's state for ``prompt``, given the tokens the
        live context holds. Restores when the state shares a longer prefix with the
        prompt than the live context does. At least one prompt token is always left to
        evaluate (llama.cpp needs fresh logits to sample from). Counts a hit or a miss."""
        entry = self._entries.get(session) if self.config.enabled else None
        if entry is not None:
            cached = min(common_prefix(entry.tokens, prompt), len(prompt) - 1)
            if cached > 0 and cached > min(common_prefix(live, prompt), len(prompt) - 1):
                self.hits += 1
                self._entries.move_to_end(session)
                return Plan(entry, cached)
        self.misses += 1
        return Plan(None, 0)

    def put(self, session: str, state: SessionState) -> None:
        """Keep ``state`` as the session's (replacing its older one), evicting the least
        recently used entries beyond the budget. A state larger than the budget is not
        kept (and the session's older one is dropped: the live context has moved on)."""
        old = self._entries.pop(session, None)
        if old is not None:
            self._bytes -= old.size
        if not self.config.enabled:
            return
        if state.size > self.config.budget_bytes:
            if old is not None:
                self.evictions += 1
            return
        self._entries[session] = state
        self._bytes += state.size
        while self._bytes > self.config.budget_bytes or len(self._entries) > self.config.max_sessions:
            _, gone = self._entries.popitem(last=False)
            self._bytes -= gone.size
            self.evictions += 1

    def forget(self, session: str) -> None:
        old = self._entries.pop(session, None)
        if old is not None:
            self._bytes -= old.size

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": len(self._entries),
            "bytes": self._bytes, "budget_bytes": self.config.budget_bytes,
        }


STATS_KEYS = ("hits", "misses", "evictions", "entries", "bytes", "budget_bytes")


def stats_from_wire(d: Any) -> dict[str, int] | None:
    """Cache counters as the engine process sends them, checked (None if malformed)."""
    if not isinstance(d, dict):
        return None
    out: dict[str, int] = {}
    for k in STATS_KEYS:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return None
        out[k] = v
    return out
