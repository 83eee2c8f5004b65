"""The last requests entered at this peer, for the dashboard: a bounded ring buffer of
small, plain records (no full prompts, no answers).

``RequestRecord.from_outcome`` turns what the Router produced for one prompt (its final
wire dict, or the error it ended with) into a record; it is pure, so it is tested
without a peer. The buffer never grows past ``maxlen``: the oldest record is dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from mesh.errors import BackendBusy, InvalidRequest, NoAnswer

PREVIEW_CHARS = 80  # of the prompt's last user message; enough to recognise it, not to leak it
ERROR_CHARS = 200

# Outcomes of one prompt, as counted by mesh_requests_total{outcome}.
OUTCOMES = ("ok", "no_answer", "busy", "invalid", "error", "cancelled")
# Where a prompt entered the peer, as counted by mesh_requests_total{entry}.
ENTRIES = ("rpc", "http", "job")


def outcome_of(exc: BaseException) -> str:
    """The outcome label for the exception a prompt ended with."""
    if isinstance(exc, NoAnswer):
        return "no_answer"
    if isinstance(exc, BackendBusy):
        return "busy"
    if isinstance(exc, InvalidRequest):
        return "invalid"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"  # the caller went away before the final
    return "error"


def escalation_reason(reason: str) -> str:
    """A bounded label for why a rung after the first was taken (``next_step`` reasons
    start with "no answer" or "confidence X below Y")."""
    if reason.startswith("no answer"):
        return "no_answer"
    if reason.startswith("confidence"):
        return "low_confidence"
    return "other"


def preview(messages, limit: int = PREVIEW_CHARS) -> str:
    """The last user message, collapsed to one line and cut to ``limit`` characters."""
    text = next((m.content for m in reversed(messages) if getattr(m, "role", None) == "user"), "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class RequestRecord:
    time: float  # wall clock when the prompt entered (seconds since the epoch)
    entry: str  # rpc | http | job
    prompt: str  # preview only (PREVIEW_CHARS)
    outcome: str  # one of OUTCOMES
    latency_s: float
    ttft_s: float | None = None  # time to the first token of text, when any came
    peer: str | None = None  # who answered (peer id, or "cloud")
    model: str | None = None
    confidence: float | None = None
    tokens: int = 0  # completion tokens of the kept answer
    escalated: bool = False
    stopped: str | None = None  # why the ladder stopped
    path: tuple[dict, ...] = field(default_factory=tuple)  # {peer, model, confidence, reason, cloud, answered}
    error: str | None = None

    @classmethod
    def from_outcome(
        cls, *, time: float, entry: str, prompt: str, latency_s: float, ttft_s: float | None,
        final: dict[str, Any] | None = None, error: BaseException | None = None,
    ) -> RequestRecord:
        if final is not None:
            path = tuple(
                {k: p.get(k) for k in ("peer", "model", "confidence", "reason", "cloud", "answered")}
                for p in final.get("path") or () if isinstance(p, dict)
            )
            conf = final.get("confidence")
            tokens = final.get("completion_tokens")
            return cls(
                time=time, entry=entry, prompt=prompt, outcome="ok", latency_s=latency_s, ttft_s=ttft_s,
                peer=final.get("peer"), model=final.get("model"),
                confidence=float(conf) if isinstance(conf, (int, float)) else None,
                tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0,
                escalated=bool(final.get("escalated")), stopped=final.get("stopped"), path=path,
            )
        outcome = outcome_of(error) if error is not None else "cancelled"
        message = None if error is None else (str(error) or type(error).__name__)[:ERROR_CHARS]
        return cls(time=time, entry=entry, prompt=prompt, outcome=outcome, latency_s=latency_s, ttft_s=ttft_s,
                   error=message)

    def escalations(self) -> list[tuple[str, str]]:
        """(reason, to) for every rung after the first: to is "mesh" or "cloud"."""
        return [(escalation_reason(str(p.get("reason") or "")), "cloud" if p.get("cloud") else "mesh")
                for p in self.path[1:]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = [dict(p) for p in self.path]
        return d


class RecentRequests:
    """The last ``maxlen`` records, newest last; each gets a sequence number so a page
    that polls can tell new ones from ones it has shown."""

    def __init__(self, maxlen: int = 100) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._items: deque[tuple[int, RequestRecord]] = deque(maxlen=maxlen)
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, record: RequestRecord) -> int:
        self._seq += 1
        self._items.append((self._seq, record))
        return self._seq

    def snapshot(self, limit: int | None = None, *, after: int = 0) -> list[dict[str, Any]]:
        """Newest first, at most ``limit``, only those with a sequence number > ``after``."""
        out = []
        for seq, rec in reversed(self._items):
            if seq <= after or (limit is not None and len(out) >= limit):
                break
            out.append({"seq": seq, **rec.to_dict()})
        return out
