"""Reading routing candidates out of the membership view.

``candidates_from_members`` takes the typed views ``Membership.view()`` returns
(``mesh.gossip.view.MemberView``), whose owner-signed metas were parsed and checked by
``PeerMeta.from_wire``: a member whose meta failed those checks has ``meta=None`` and
``meta_problem`` naming the part that failed. Such a member is skipped whole (none of
its models is offered) and counted by that reason in ``CandidateList.skipped``, as is a
member that offers no model; nothing here can raise. Dead and left members are not
candidates and are counted in ``not_live`` (they are not malformed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.gossip.view import BAD_HW, BAD_LOAD, BAD_MODELS, NO_META, MemberView
from mesh.routing.candidate import LIVE_STATUSES, Candidate

# Skip reasons (keys of CandidateList.skipped): the BadMeta reasons, and these
NO_MODELS = "no models"  # it serves none now (engine not ready, or --no-model)
DUPLICATE = "duplicate peer"
NOT_LIVE_STATUSES = ("dead", "left")
__all__ = ["BAD_HW", "BAD_LOAD", "BAD_MODELS", "DUPLICATE", "NO_META", "NO_MODELS", "CandidateList",
           "candidates_from_members"]


class CandidateList(list):
    """A ``list[Candidate]`` that also says what was left out and why.

    ``skipped``: reason -> members skipped for malformed data. ``not_live``: dead or
    left members (not candidates, not malformed)."""

    def __init__(self, items: Iterable[Candidate] = (), *, skipped: Mapping[str, int] | None = None, not_live: int = 0):
        super().__init__(items)
        self.skipped: dict[str, int] = dict(skipped or {})
        self.not_live = not_live

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _rtt(rtts: Mapping[str, Any], peer_id: str) -> float | None:
    v = rtts.get(peer_id)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v)
    return None


def _read(m: MemberView, *, rtts: Mapping[str, Any], self_id: str) -> list[Candidate] | str | None:
    """The member's candidates; a skip reason; or None when it is not live."""
    own = m.peer_id == self_id or m.is_self
    status = "alive" if own else m.state  # this peer's own backend still serves what reaches it while it leaves
    if status not in LIVE_STATUSES:
        return None
    meta = m.meta
    if meta is None:
        return m.meta_problem or NO_META
    if not meta.models:
        return NO_MODELS
    rtt_s = 0.0 if own else _rtt(rtts, m.peer_id)
    out: list[Candidate] = []
    seen: set[str] = set()
    for model in meta.models:
        if model.name in seen:  # a repeated model name: the first entry stands
            continue
        seen.add(model.name)
        out.append(Candidate(
            peer_id=m.peer_id,
            name=m.name,
            model=model.name,
            parameters=model.parameters,
            context_length=model.context_length,
            tokens_per_s=model.tokens_per_s,
            running=meta.load.running,
            waiting=meta.load.waiting,
            parallel=meta.load.parallel,
            queue_limit=meta.load.queue_limit,
            rtt_s=rtt_s,
            on_battery=bool(meta.hw.on_battery),
            is_local=own,
            status=status,
            tier=model.tier if model.tier is not None else meta.tier,
            load_s=0.0 if model.loaded else model.load_s,
            features=frozenset(model.features),
        ))
    return out


def candidates_from_members(view: Iterable[MemberView], *, rtts: Mapping[str, float], self_id: str) -> CandidateList:
    """Candidates (one per live member and model) from ``Membership.view()``.

    ``rtts``: peer id text -> measured round trip in seconds (missing or bad: unknown,
    scored with ``RoutingConfig.unknown_rtt_s``). ``self_id``: this peer's id text; its
    candidates are ``is_local`` with an RTT of 0. Never raises: members with a bad meta
    or no model are skipped and counted (see the module docstring)."""
    out = CandidateList()
    seen: set[str] = set()
    for m in view:
        got = _read(m, rtts=rtts, self_id=self_id)
        if got is None:
            out.not_live += 1
        elif isinstance(got, str):
            out.skipped[got] = out.skipped.get(got, 0) + 1
        elif m.peer_id in seen:  # the view has one entry per member; a second is not trusted
            out.skipped[DUPLICATE] = out.skipped.get(DUPLICATE, 0) + 1
        else:
            seen.add(m.peer_id)
            out.extend(got)
    return out
