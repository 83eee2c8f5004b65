"""Reading routing candidates out of the membership view.

``candidates_from_members`` takes the dicts ``mesh.gossip.service.Membership.view()``
returns (``peer_id``, ``name``, ``state``, ``self``, and the owner-signed ``meta`` of
``mesh.inference.capabilities.snapshot``)::

    meta = {"hw": {..., "on_battery": bool | None},
            "models": [{"name", "parameters", "quantisation", "context_length", "tokens_per_s",
                        "tier" (optional int)}],
            "load": {"running", "waiting", "parallel", "queue_limit"},
            "tier": optional int (the default tier of this peer's models)}

The signature proves who wrote a meta, not that it is sane: a buggy or hostile member
can gossip any msgpack. So every field is type- and range-checked here, and a member
with any bad field is skipped whole (none of its models is offered) and counted by
reason in ``CandidateList.skipped``; nothing in a meta can raise. Dead and left members
are not candidates and are counted in ``not_live`` (they are not malformed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.routing.candidate import LIVE_STATUSES, Candidate

MAX_MODELS_PER_PEER = 32
MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
MAX_PARAMETERS = 10**13
MAX_CONTEXT = 10**8
MAX_COUNT = 10**6  # running, waiting, queue_limit
MAX_PARALLEL = 10**4
MAX_TOKENS_PER_S = 10**6
MAX_TIER = 1000

# Skip reasons (keys of CandidateList.skipped)
BAD_ENTRY = "bad entry"  # peer_id, name or state missing or malformed
DUPLICATE = "duplicate peer"
NO_META = "no meta"
BAD_HW = "bad hw"
BAD_MODELS = "bad models"
BAD_LOAD = "bad load"
_NOT_LIVE = "not live"  # dead or left: counted in not_live, not in skipped
NOT_LIVE_STATUSES = ("dead", "left")


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


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _int(d: Mapping, key: str, lo: int, hi: int, reason: str, *, optional: bool = False) -> int | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _Bad(reason)
    return v


def _text(v: Any, limit: int, reason: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise _Bad(reason)
    return v


def _rtt(rtts: Mapping[str, Any], peer_id: str) -> float | None:
    v = rtts.get(peer_id)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v)
    return None


def _read(entry: Any, *, rtts: Mapping[str, Any], self_id: str) -> list[Candidate]:
    if not isinstance(entry, Mapping):
        raise _Bad(BAD_ENTRY)
    peer_id = _text(entry.get("peer_id"), MAX_PEER_ID_CHARS, BAD_ENTRY)
    name = _text(entry.get("name"), MAX_NAME_CHARS, BAD_ENTRY)
    status = entry.get("state")
    own = peer_id == self_id or entry.get("self") is True
    if own and status in NOT_LIVE_STATUSES:
        status = "alive"  # this peer's own backend still serves what reaches it while it leaves
    if status in NOT_LIVE_STATUSES:
        raise _Bad(_NOT_LIVE)
    if status not in LIVE_STATUSES:
        raise _Bad(BAD_ENTRY)
    meta = entry.get("meta")
    if not isinstance(meta, Mapping) or not meta:
        raise _Bad(NO_META)

    hw = meta.get("hw")
    if not isinstance(hw, Mapping):
        raise _Bad(BAD_HW)
    on_battery = hw.get("on_battery")
    if on_battery is not None and not isinstance(on_battery, bool):
        raise _Bad(BAD_HW)

    load = meta.get("load")
    if not isinstance(load, Mapping):
        raise _Bad(BAD_LOAD)
    running = _int(load, "running", 0, MAX_COUNT, BAD_LOAD)
    waiting = _int(load, "waiting", 0, MAX_COUNT, BAD_LOAD)
    parallel = _int(load, "parallel", 1, MAX_PARALLEL, BAD_LOAD)
    queue_limit = _int(load, "queue_limit", 0, MAX_COUNT, BAD_LOAD)

    peer_tier = _int(meta, "tier", 0, MAX_TIER, BAD_MODELS, optional=True)
    models = meta.get("models")
    if not isinstance(models, list) or not 0 < len(models) <= MAX_MODELS_PER_PEER:
        raise _Bad(BAD_MODELS)
    is_local = own
    rtt_s = 0.0 if is_local else _rtt(rtts, peer_id)
    out: list[Candidate] = []
    seen: set[str] = set()
    for m in models:
        if not isinstance(m, Mapping):
            raise _Bad(BAD_MODELS)
        model = _text(m.get("name"), MAX_NAME_CHARS, BAD_MODELS)
        tps = m.get("tokens_per_s")
        if not isinstance(tps, (int, float)) or isinstance(tps, bool) or not (0 <= tps <= MAX_TOKENS_PER_S):
            raise _Bad(BAD_MODELS)  # NaN fails the range check too
        cand = Candidate(
            peer_id=peer_id,
            name=name,
            model=model,
            parameters=_int(m, "parameters", 0, MAX_PARAMETERS, BAD_MODELS),
            context_length=_int(m, "context_length", 1, MAX_CONTEXT, BAD_MODELS),
            tokens_per_s=float(tps),
            running=running,
            waiting=waiting,
            parallel=parallel,
            queue_limit=queue_limit,
            rtt_s=rtt_s,
            on_battery=bool(on_battery),
            is_local=is_local,
            status=status,
            tier=_int(m, "tier", 0, MAX_TIER, BAD_MODELS, optional=True) if m.get("tier") is not None else peer_tier,
        )
        if model not in seen:  # a repeated model name: the first entry stands
            seen.add(model)
            out.append(cand)
    return out


def candidates_from_members(
    view: Iterable[Mapping[str, Any]], *, rtts: Mapping[str, float], self_id: str
) -> CandidateList:
    """Candidates (one per live member and model) from ``Membership.view()`` dicts.

    ``rtts``: peer id text -> measured round trip in seconds (missing or bad: unknown,
    scored with ``RoutingConfig.unknown_rtt_s``). ``self_id``: this peer's id text; its
    candidates are ``is_local`` with an RTT of 0. Never raises on what members gossip:
    malformed members are skipped and counted (see the module docstring)."""
    out = CandidateList()
    seen: set[str] = set()
    for entry in view:
        try:
            cands = _read(entry, rtts=rtts, self_id=self_id)
        except _Bad as bad:
            if bad.reason == _NOT_LIVE:
                out.not_live += 1
            else:
                out.skipped[bad.reason] = out.skipped.get(bad.reason, 0) + 1
            continue
        peer_id = cands[0].peer_id
        if peer_id in seen:  # the view has one entry per member; a second is not trusted
            out.skipped[DUPLICATE] = out.skipped.get(DUPLICATE, 0) + 1
            continue
        seen.add(peer_id)
        out.extend(cands)
    return out
