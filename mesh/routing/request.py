"""What the caller asks of the router: ``RouteRequest``.

A route request is not the prompt: it is what routing needs to know about it (a token
estimate, the answer budget, pins, the session, and the escalation policy). The shell
builds one per prompt, usually with ``RouteRequest.for_generation``.

Pins: ``pinned_peer`` and ``pinned_model`` restrict the first rung of the ladder to
that peer and/or model (``mesh ask --peer ID --model NAME``); ``min_tier`` and
``min_parameters`` restrict every rung. ``local_only`` keeps the prompt in the mesh (the
cloud rung is never offered); ``no_escalate`` takes the first answer as it is. ``needs``:
the request options (stop sequences, logprobs, a grammar) every rung's engine must honour.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest

MAX_SESSION_ID_CHARS = 128
MAX_NAME_CHARS = 128
_ID_TEXT = re.compile(r"^[a-z2-7]{1,128}$")  # peer ids are lower-case base32 (mesh.identity.keys)

CHARS_PER_TOKEN = 4  # a rough, conservative estimate for English text with BPE tokenizers
TOKENS_PER_MESSAGE = 4  # chat template overhead per message


def estimate_prompt_tokens(messages: Iterable[Any]) -> int:
    """An over-estimate of the prompt's tokens from message objects with ``content``.

    Used only to check that a model's context fits; erring high leaves room for the
    chat template."""
    total = 0
    for m in messages:
        total += TOKENS_PER_MESSAGE + math.ceil(len(m.content) / CHARS_PER_TOKEN)
    return total


@dataclass(frozen=True, slots=True)
class RouteRequest:
    prompt_tokens: int  # estimate of the prompt's tokens (see estimate_prompt_tokens)
    max_tokens: int  # the answer budget
    pinned_peer: str | None = None  # peer id text: only this peer
    pinned_model: str | None = None  # model name (case-insensitive): only this model
    min_tier: int | None = None  # only models whose peer declares at least this tier
    min_parameters: int | None = None  # only models with at least this many parameters
    session_id: str | None = None  # same id -> same peer while it stays healthy
    local_only: bool = False  # never leave the mesh (no cloud rung)
    threshold: float = 0.7  # confidence below this escalates
    no_escalate: bool = False  # keep the first answer as it is
    needs: frozenset[str] = frozenset()  # request options the engine must honour (GenerationRequest.needs)

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "max_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidRequest(f"{name} must be a non-negative integer, got {v!r}")
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1")
        if self.pinned_peer is not None and not _ID_TEXT.match(self.pinned_peer):
            raise InvalidRequest(f"pinned peer {self.pinned_peer!r} is not a peer id")
        if self.pinned_model is not None and not (0 < len(self.pinned_model) <= MAX_NAME_CHARS):
            raise InvalidRequest("pinned model name must be 1..128 characters")
        for name in ("min_tier", "min_parameters"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise InvalidRequest(f"{name} must be a non-negative integer or None, got {v!r}")
        if self.session_id is not None and not (0 < len(self.session_id) <= MAX_SESSION_ID_CHARS):
            raise InvalidRequest(f"session id must be 1..{MAX_SESSION_ID_CHARS} characters")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            raise InvalidRequest(f"threshold must be in [0, 1], got {self.threshold!r}")

    @property
    def total_tokens(self) -> int:
        """Context the answer needs: prompt plus answer budget."""
        return self.prompt_tokens + self.max_tokens

    @classmethod
    def for_generation(cls, generation: Any, **kw: Any) -> RouteRequest:
        """A route request for a ``mesh.inference.GenerationRequest`` (its messages and
        max_tokens); pins, session and policy come as keywords."""
        kw.setdefault("needs", frozenset(getattr(generation, "needs", ())))
        return cls(prompt_tokens=estimate_prompt_tokens(generation.messages), max_tokens=generation.max_tokens, **kw)
