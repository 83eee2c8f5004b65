"""The typed member view: what gossip hands routing, jobs, identity, HTTP and the CLI.

``PeerMeta`` is the self-description a peer signs and gossips (hardware, models, load,
engine, and two flags); ``MemberView`` is one member as this peer sees it now. Its
``meta.load`` running and waiting are the freshest this peer knows: they travel outside
the signed record (``mesh.gossip.load``) and replace the signed ones (``with_load``); a
record is re-signed only when something else changes (``needs_resign``). Both are
read from the wire with ``from_wire`` (a member's meta is msgpack any member may have
written; the CLI reads views from a peer's ``members`` answer) and written back with
``to_wire`` (the dict shape documented in docs/protocol.md).

The signature proves who wrote a meta, not that it is sane. ``PeerMeta.from_wire``
type- and range-checks every field and raises ``BadMeta`` whose ``reason`` names the
part that failed (routing counts skipped members by it). A member whose meta is bad
keeps its place in the view, with ``meta=None`` and ``meta_problem`` saying why; the
member's state still counts, only what it offers is ignored.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mesh.errors import MeshError
from mesh.identity.renewal import RENEW_META_KEY as RENEW_KEY

MAX_MODELS_PER_PEER = 32
MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
MAX_ADDRESSES = 8
MAX_ADDRESS_CHARS = 128
MAX_PARAMETERS = 10**13
MAX_CONTEXT = 10**8
MAX_COUNT = 10**6  # running, waiting, queue_limit, restarts
MAX_PARALLEL = 10**4
MAX_TOKENS_PER_S = 10**6
MAX_LOAD_S = 3600.0  # the longest a model load may be declared to take
MAX_TIER = 1000
MAX_MB = 10**9
MAX_CPUS = 10**5
MAX_SHORT_TEXT = 64  # gpu, quantisation, engine state
MAX_FEATURES = 16  # request options a model's engine honours
MAX_REASON_CHARS = 300
MEMBER_STATES = ("alive", "suspect", "dead", "left")

# BadMeta reasons (also routing's skip reasons, CandidateList.skipped)
NO_META = "no meta"
BAD_HW = "bad hw"
BAD_MODELS = "bad models"
BAD_LOAD = "bad load"
BAD_ENGINE = "bad engine"
BAD_FLAG = "bad flag"  # renew or rotating not a bool
BAD_LEND = "bad lend"  # the memory a peer lends, or the split of its model
MAX_SPLIT_PARTS = 16
MAX_PORT = 65535
BAD_ENTRY = "bad entry"  # MemberView.from_wire: peer_id, name, state, ... missing or malformed

ROTATING_KEY = "rotating"  # in a leaving record: this peer comes back under new keys


class BadMeta(MeshError):
    """A meta or member view that fails its checks; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _int(d: Mapping, key: str, lo: int, hi: int, reason: str, *, optional: bool = False) -> int | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadMeta(reason, f"{key} must be an integer in {lo}..{hi}")
    return v


def _text(d: Mapping, key: str, limit: int, reason: str, *, optional: bool = False, empty: bool = False) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit or (not v and not empty):
        raise BadMeta(reason, f"{key} must be text of {'0' if empty else '1'}..{limit} characters")
    return v


def _number(d: Mapping, key: str, hi: float, reason: str, *, optional: bool = False) -> float | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= hi:
        raise BadMeta(reason, f"{key} must be a number in 0..{hi}")
    return float(v)


def _flag(d: Mapping, key: str, reason: str) -> bool | None:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise BadMeta(reason, f"{key} must be true, false or nil")
    return v


def _section(meta: Mapping, key: str, reason: str) -> Mapping:
    v = meta.get(key)
    if not isinstance(v, Mapping):
        raise BadMeta(reason, f"{key} must be a map")
    return v


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Hardware:
    cpu_count: int | None = None
    ram_total_mb: int | None = None
    ram_available_mb: int | None = None
    gpu: str = ""  # "" when none was found
    on_battery: bool | None = None  # None: no battery API

    @classmethod
    def from_wire(cls, d: Mapping) -> Hardware:
        return cls(
            cpu_count=_int(d, "cpu_count", 1, MAX_CPUS, BAD_HW, optional=True),
            ram_total_mb=_int(d, "ram_total_mb", 0, MAX_MB, BAD_HW, optional=True),
            ram_available_mb=_int(d, "ram_available_mb", 0, MAX_MB, BAD_HW, optional=True),
            gpu=_text(d, "gpu", MAX_SHORT_TEXT, BAD_HW, optional=True, empty=True) or "",
            on_battery=_flag(d, "on_battery", BAD_HW),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"cpu_count": self.cpu_count, "ram_total_mb": self.ram_total_mb,
                "ram_available_mb": self.ram_available_mb, "gpu": self.gpu, "on_battery": self.on_battery}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    parameters: int
    context_length: int
    tokens_per_s: float
    quantisation: str = ""
    tier: int | None = None  # None: the peer's default tier (PeerMeta.tier)
    loaded: bool = True  # False: on the peer's disk, loaded on demand (wire "cold": true)
    load_s: float = 0.0  # seconds a load is expected to take, when not loaded
    features: tuple[str, ...] = ()  # request options its engine honours (mesh.inference.backend.ENGINE_FEATURES)

    @classmethod
    def from_wire(cls, d: Any) -> ModelInfo:
        if not isinstance(d, Mapping):
            raise BadMeta(BAD_MODELS, "a model entry must be a map")
        cold = d.get("cold", False)
        if not isinstance(cold, bool):
            raise BadMeta(BAD_MODELS, "a model's cold flag must be true or false")
        features = d.get("features", [])
        if not isinstance(features, list) or len(features) > MAX_FEATURES or not all(
            isinstance(f, str) and 0 < len(f) <= MAX_SHORT_TEXT for f in features
        ):
            raise BadMeta(BAD_MODELS, f"a model's features must be a list of at most {MAX_FEATURES} short names")
        return cls(
            features=tuple(features),
            name=_text(d, "name", MAX_NAME_CHARS, BAD_MODELS),
            parameters=_int(d, "parameters", 0, MAX_PARAMETERS, BAD_MODELS),
            context_length=_int(d, "context_length", 1, MAX_CONTEXT, BAD_MODELS),
            tokens_per_s=_number(d, "tokens_per_s", MAX_TOKENS_PER_S, BAD_MODELS),
            quantisation=_text(d, "quantisation", MAX_SHORT_TEXT, BAD_MODELS, optional=True, empty=True) or "",
            tier=_int(d, "tier", 0, MAX_TIER, BAD_MODELS, optional=True),
            loaded=not cold,
            load_s=(_number(d, "load_s", MAX_LOAD_S, BAD_MODELS, optional=True) or 0.0) if cold else 0.0,
        )

    def to_wire(self) -> dict[str, Any]:
        cold = None if self.loaded else True  # a loaded model says nothing: older peers read it as before
        return _drop_none({"name": self.name, "parameters": self.parameters, "quantisation": self.quantisation,
                           "context_length": self.context_length, "tokens_per_s": self.tokens_per_s,
                           "tier": self.tier, "cold": cold, "load_s": None if self.loaded else round(self.load_s, 2),
                           "features": list(self.features) or None})


@dataclass(frozen=True)
class LoadInfo:
    running: int = 0
    waiting: int = 0
    parallel: int = 1
    queue_limit: int = 0

    @classmethod
    def from_wire(cls, d: Mapping) -> LoadInfo:
        return cls(
            running=_int(d, "running", 0, MAX_COUNT, BAD_LOAD),
            waiting=_int(d, "waiting", 0, MAX_COUNT, BAD_LOAD),
            parallel=_int(d, "parallel", 0, MAX_PARALLEL, BAD_LOAD),  # 0: serves no model
            queue_limit=_int(d, "queue_limit", 0, MAX_COUNT, BAD_LOAD),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting, "parallel": self.parallel,
                "queue_limit": self.queue_limit}


@dataclass(frozen=True)
class EngineInfo:
    state: str = "ready"  # ready, starting, restarting, failed, off
    reason: str = ""
    restarts: int = 0

    @classmethod
    def from_wire(cls, d: Mapping) -> EngineInfo:
        return cls(
            state=_text(d, "state", MAX_SHORT_TEXT, BAD_ENGINE),
            reason=_text(d, "reason", MAX_REASON_CHARS, BAD_ENGINE, optional=True, empty=True) or "",
            restarts=_int(d, "restarts", 0, MAX_COUNT, BAD_ENGINE, optional=True) or 0,
        )

    def to_wire(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason[:MAX_REASON_CHARS], "restarts": self.restarts}


@dataclass(frozen=True)
class LendInfo:
    """Memory this peer lends to other peers' split models (``--lend-memory``, issue 16):
    what it offers, what is not reserved yet, the port of its tunnel (on the host of
    its RPC address) and its engine build (a borrower uses only lenders of its own)."""

    offer_mb: int
    free_mb: int
    port: int
    build: str

    @classmethod
    def from_wire(cls, d: Mapping) -> LendInfo:
        offer = _int(d, "offer_mb", 1, MAX_MB, BAD_LEND)
        return cls(
            offer_mb=offer,
            free_mb=_int(d, "free_mb", 0, offer, BAD_LEND),
            port=_int(d, "port", 1, MAX_PORT, BAD_LEND),
            build=_text(d, "build", MAX_SHORT_TEXT, BAD_LEND),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"offer_mb": self.offer_mb, "free_mb": self.free_mb, "port": self.port, "build": self.build}


@dataclass(frozen=True)
class SplitPart:
    """Where a share of this peer's split model lives: ``layers`` slots (repeating layers,
    the output head counted as one) on peer ``peer`` (its id; this peer's own for the
    local share)."""

    peer: str
    name: str
    layers: int

    @classmethod
    def from_wire(cls, d: Any) -> SplitPart:
        if not isinstance(d, Mapping):
            raise BadMeta(BAD_LEND, "a split part must be a map")
        return cls(
            peer=_text(d, "peer", MAX_PEER_ID_CHARS, BAD_LEND),
            name=_text(d, "name", MAX_NAME_CHARS, BAD_LEND, empty=True),
            layers=_int(d, "layers", 0, MAX_COUNT, BAD_LEND),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"peer": self.peer, "name": self.name, "layers": self.layers}


@dataclass(frozen=True)
class PeerMeta:
    """What a peer says about itself (``mesh.inference.capabilities.snapshot`` builds it).

    ``models`` is empty while the peer serves none (its engine is not ready, or it runs
    with ``--no-model``)."""

    hw: Hardware = field(default_factory=Hardware)
    models: tuple[ModelInfo, ...] = ()
    load: LoadInfo = field(default_factory=LoadInfo)
    engine: EngineInfo | None = None
    tier: int | None = None  # the default tier of this peer's models
    renew: bool = False  # it holds the mesh authority key and answers mesh.renew
    rotating: bool = False  # it left to come back under new keys (mesh rotate)
    lend: LendInfo | None = None  # memory it lends (--lend-memory)
    split: tuple[SplitPart, ...] = ()  # its model's layers on other peers, when split

    @classmethod
    def from_wire(cls, meta: Any) -> PeerMeta:
        """Parse a gossiped meta; ``BadMeta`` (never anything else) when any part is wrong.

        Parts are checked in a fixed order (hw, load, tier and models, engine), so one
        meta always fails for the same reason."""
        if not isinstance(meta, Mapping) or not meta:
            raise BadMeta(NO_META)
        hw = Hardware.from_wire(_section(meta, "hw", BAD_HW))
        load = LoadInfo.from_wire(_section(meta, "load", BAD_LOAD))
        tier = _int(meta, "tier", 0, MAX_TIER, BAD_MODELS, optional=True)
        models = meta.get("models")
        if not isinstance(models, list) or len(models) > MAX_MODELS_PER_PEER:
            raise BadMeta(BAD_MODELS, f"models must be a list of at most {MAX_MODELS_PER_PEER}")
        if models and load.parallel < 1:
            raise BadMeta(BAD_LOAD, "a peer that serves models runs at least one generation at once")
        engine = meta.get("engine")
        if engine is not None and not isinstance(engine, Mapping):
            raise BadMeta(BAD_ENGINE, "engine must be a map")
        flags = {}
        for key in (RENEW_KEY, ROTATING_KEY):
            flags[key] = _flag(meta, key, BAD_FLAG) is True
        lend = meta.get("lend")
        if lend is not None and not isinstance(lend, Mapping):
            raise BadMeta(BAD_LEND, "lend must be a map")
        split = meta.get("split", [])
        if not isinstance(split, list) or len(split) > MAX_SPLIT_PARTS:
            raise BadMeta(BAD_LEND, f"split must be a list of at most {MAX_SPLIT_PARTS}")
        return cls(
            lend=LendInfo.from_wire(lend) if lend is not None else None,
            split=tuple(SplitPart.from_wire(p) for p in split),
            hw=hw,
            models=tuple(ModelInfo.from_wire(m) for m in models),
            load=load,
            engine=EngineInfo.from_wire(engine) if engine is not None else None,
            tier=tier,
            **flags,
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hw": self.hw.to_wire(), "models": [m.to_wire() for m in self.models],
                               "load": self.load.to_wire()}
        if self.engine is not None:
            out["engine"] = self.engine.to_wire()
        if self.tier is not None:
            out["tier"] = self.tier
        if self.renew:
            out[RENEW_KEY] = True
        if self.rotating:
            out[ROTATING_KEY] = True
        if self.lend is not None:
            out["lend"] = self.lend.to_wire()
        if self.split:
            out["split"] = [p.to_wire() for p in self.split]
        return out

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


RESIGN_RAM_FRACTION = 0.1  # available memory is re-signed when it moves by a tenth of the total ...
RESIGN_RAM_MIN_MB = 512  # ... and at least this much


def needs_resign(signed: PeerMeta, current: PeerMeta) -> bool:
    """Whether ``current`` says something the last signed meta does not, so the member
    record must be re-signed. Load (running, waiting) does not count: it travels outside
    the record (``mesh.gossip.load``); nor do small moves of available memory, which
    changes every second and would otherwise re-sign the record as often."""
    ram_signed, ram_now = signed.hw.ram_available_mb, current.hw.ram_available_mb
    if ram_signed is not None and ram_now is not None:
        step = max(RESIGN_RAM_MIN_MB, (current.hw.ram_total_mb or 0) * RESIGN_RAM_FRACTION)
        if abs(ram_now - ram_signed) < step:
            current = replace(current, hw=replace(current.hw, ram_available_mb=ram_signed))
    current = replace(current, load=replace(current.load, running=signed.load.running, waiting=signed.load.waiting))
    return current != signed


def with_load(meta: PeerMeta, running: int, waiting: int) -> PeerMeta:
    """``meta`` with a fresher load (from ``mesh.gossip.load``) than the one it was signed with."""
    if meta.load.running == running and meta.load.waiting == waiting:
        return meta
    return replace(meta, load=replace(meta.load, running=running, waiting=waiting))


def read_meta(meta: Any) -> tuple[PeerMeta | None, str | None]:
    """``(PeerMeta, None)`` for a good meta, ``(None, reason)`` for a bad one."""
    try:
        return PeerMeta.from_wire(meta), None
    except BadMeta as bad:
        return None, bad.reason


@dataclass(frozen=True)
class MemberView:
    """One member as this peer sees it now (``Membership.view()``)."""

    peer_id: str  # hex text
    name: str
    state: str  # alive, suspect, dead, left
    incarnation: int = 0
    addresses: tuple[str, ...] = ()
    meta: PeerMeta | None = None  # None: it gossiped none yet, or a bad one (meta_problem says which)
    meta_problem: str | None = None
    is_self: bool = False
    last_heard_s: float | None = None  # since a message came from it directly (None: never)
    since_s: float = 0.0  # since its state last changed
    transport: str | None = None  # its certified CurveZMQ key (text): what to dial it with
    revoked: bool = False
    replaced_by: str | None = None  # it rotated its keys: the id it goes by now
    load_heard_at: float | None = None  # this peer's clock when its load (meta.load) was learned; None: unknown

    @property
    def live(self) -> bool:
        return self.state in ("alive", "suspect")

    @property
    def address(self) -> str | None:
        return self.addresses[0] if self.addresses else None

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return self.meta.models if self.meta is not None else ()

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "peer_id": self.peer_id, "name": self.name, "state": self.state, "incarnation": self.incarnation,
            "addresses": list(self.addresses), "meta": self.meta.to_wire() if self.meta is not None else {},
            "self": self.is_self, "last_heard_s": self.last_heard_s, "since_s": self.since_s,
        }
        if self.meta_problem is not None:
            out["meta_problem"] = self.meta_problem
        if self.transport is not None:
            out["transport"] = self.transport
        if self.revoked:
            out["revoked"] = True
        if self.replaced_by is not None:
            out["replaced_by"] = self.replaced_by
        return out

    @classmethod
    def from_wire(cls, d: Any) -> MemberView:
        """A view from a peer's ``members`` answer; ``BadMeta(BAD_ENTRY)`` when the entry
        itself is malformed (a bad meta only empties ``meta``)."""
        if not isinstance(d, Mapping):
            raise BadMeta(BAD_ENTRY, "a member must be a map")
        state = d.get("state")
        if state not in MEMBER_STATES:
            raise BadMeta(BAD_ENTRY, f"state must be one of {', '.join(MEMBER_STATES)}")
        addresses = d.get("addresses") or []
        if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES or not all(
                isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS_CHARS for a in addresses):
            raise BadMeta(BAD_ENTRY, "addresses must be a short list of text")
        meta, problem = read_meta(d.get("meta"))
        if d.get("meta_problem") is not None and problem == NO_META:
            problem = _text(d, "meta_problem", MAX_SHORT_TEXT, BAD_ENTRY)  # as the peer that read it said
        return cls(
            peer_id=_text(d, "peer_id", MAX_PEER_ID_CHARS, BAD_ENTRY),
            name=_text(d, "name", MAX_NAME_CHARS, BAD_ENTRY),
            state=state,
            incarnation=_int(d, "incarnation", 0, 1 << 63, BAD_ENTRY, optional=True) or 0,
            addresses=tuple(addresses),
            meta=meta,
            meta_problem=problem,
            is_self=_flag(d, "self", BAD_ENTRY) is True,
            last_heard_s=_number(d, "last_heard_s", math.inf, BAD_ENTRY, optional=True),
            since_s=_number(d, "since_s", math.inf, BAD_ENTRY, optional=True) or 0.0,
            transport=_text(d, "transport", MAX_ADDRESS_CHARS, BAD_ENTRY, optional=True),
            revoked=_flag(d, "revoked", BAD_ENTRY) is True,
            replaced_by=_text(d, "replaced_by", MAX_PEER_ID_CHARS, BAD_ENTRY, optional=True),
        )
