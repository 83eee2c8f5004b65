"""What ``mesh doctor`` observed and what it concludes, as frozen data.

Everything the probes bring back from the network is validated here before any rule
reads it (``sighting_from_record``, ``Probe`` field checks in ``probe.py``), and every
collection is capped: a LAN full of hostile announcements cannot make the doctor slow
or its report unreadable.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.discovery.hints import DropReason, hint_from_record
from mesh.gossip.view import MemberView

MAX_SIGHTINGS = 64  # mDNS records kept from one browse; more are counted, not kept
MAX_TARGETS = 32  # addresses probed in one run


class Severity(enum.Enum):
    """``ERROR``: stops peers from seeing each other. ``WARNING``: works now, or maybe,
    but will bite. ``INFO``: context. Errors and warnings make ``mesh doctor`` exit 1."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    code: str  # stable name of the cause (docs/operations.md lists them)
    severity: Severity
    subject: str  # who or what: "10.0.0.2:7411 (peer h2)", "this peer"
    seen: str  # what was observed
    next: str  # what to do next

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity.value, "subject": self.subject,
                "seen": self.seen, "next": self.next}


@dataclass(frozen=True)
class Interface:
    name: str
    address: str  # IPv4 address
    prefixlen: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(f"{self.address}/{self.prefixlen}").network


@dataclass(frozen=True)
class LocalView:
    """This host and its peer, from the data dir and (if one runs) the peer itself."""

    peer_id: str | None = None  # from identity.key (None: no identity yet)
    mesh: str | None = None  # mesh id text from mesh.json (None: in no mesh)
    running: bool = False  # a live mesh-peer wrote peer.json
    advertise: tuple[str, ...] = ()  # "tcp://ip:port" the running peer tells others
    interfaces: tuple[Interface, ...] = ()  # this host's IPv4 interfaces (loopback too)
    problems: tuple[str, ...] = ()  # files or calls that failed, in words
    mdns_error: str | None = None  # the browse could not start (why)
    mdns_browsed_s: float = 0.0  # how long mDNS was listened to


@dataclass(frozen=True)
class Sighting:
    """One well-formed mDNS record of ``_mesh._tcp.local.``, of any mesh or version."""

    peer_id: str
    mesh: str
    version: int
    addresses: tuple[str, ...]  # IP addresses, as announced
    port: int
    transport_key: bytes | None = None  # the CurveZMQ key it announces (TXT "c"), unverified


@dataclass(frozen=True)
class Target:
    """An address to probe and where it came from."""

    address: str  # "tcp://host:port"
    sources: tuple[str, ...]  # "join", "seed", "known_peers", "members", "mdns"
    peer_id: str | None = None  # who we expect there, if a source said
    name: str | None = None  # its member name, if known
    transport_key: bytes | None = None  # its CurveZMQ key, if a source said (needed to ping it)

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.address.removeprefix("tcp://")
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def label(self) -> str:
        host, port = self.host_port
        who = self.name or (self.peer_id[:12] if self.peer_id else None)
        return f"{host}:{port}" + (f" ({who})" if who else "")


class Reach(enum.Enum):
    OPEN = "open"
    REFUSED = "refused"  # RST: nothing listens there
    TIMEOUT = "timeout"  # no answer: filtered, or the host is down
    UNREACHABLE = "unreachable"  # no route, host unreachable, name does not resolve


@dataclass(frozen=True)
class Probe:
    """A TCP connect and a signed ``ping`` to one target."""

    target: Target
    tcp: Reach
    ip: str | None = None  # the address actually connected to (a host name resolved)
    detail: str = ""  # the OS error, for REFUSED / TIMEOUT / UNREACHABLE
    rpc: str | None = None  # "ok", "no_reply", "bad_version", "no_transport_key", or the error code ("rejected:...")
    message: str = ""  # the remote's error message (bounded)
    peer_id: str | None = None  # who answered (its certificate, or the ping reply)
    mesh: str | None = None  # the mesh id in the certificate it presented
    remote_time: float | None = None  # the ping reply's clock, Unix seconds
    sent_at: float | None = None  # our clock around the call
    received_at: float | None = None


@dataclass(frozen=True)
class Observations:
    local: LocalView
    sightings: tuple[Sighting, ...] = ()
    probes: tuple[Probe, ...] = ()
    dropped_records: Mapping[str, int] = field(default_factory=dict)  # malformed mDNS records, by reason
    members: tuple[MemberView, ...] = ()  # the running peer's member view (other peers only)
    engine: "EngineView | None" = None  # this machine's CPU and engine build, and the running peer's engine


@dataclass(frozen=True)
class EngineView:
    """What the doctor knows of the engine on this machine."""

    cpu: Mapping[str, Any]  # mesh.inference.cpu_variant.cpu_summary()
    variants: tuple[str, ...]  # CPU variant libraries the installed build ships (empty: a native build)
    peer: Mapping[str, Any] | None = None  # the running peer's "engine" from `mesh info` (state, reason, build)


def sighting_from_record(
    *, name: str, properties: Mapping[bytes, bytes | None], addresses: Iterable[str], port: int | None
) -> Sighting | DropReason:
    """Check one resolved record with the discovery rules (size, charset, id, mesh, version,
    port, name, addresses), whatever its mesh and version: the doctor wants to name a
    neighbour of another mesh or an older build, not drop it."""
    raw = properties.get(b"mesh")
    try:
        fp = raw.decode("ascii") if raw else ""
    except UnicodeDecodeError:
        fp = ""
    outcome = hint_from_record(
        name=name, properties=properties, addresses=addresses, port=port, mesh=fp, own_peer_id=None, now=0.0,
    )
    if isinstance(outcome, DropReason):
        return outcome
    ips = tuple(a.removeprefix("tcp://").rpartition(":")[0].strip("[]") for a in (outcome.address, *outcome.alternates))
    assert outcome.peer_id is not None and outcome.mesh is not None and outcome.version is not None and port
    return Sighting(outcome.peer_id, outcome.mesh, outcome.version, ips, port, outcome.transport_key)


def merge_targets(found: Iterable[Target], *, limit: int = MAX_TARGETS) -> list[Target]:
    """One target per address (sources, id and name merged), in the order first given,
    at most ``limit``."""
    by_address: dict[str, Target] = {}
    for t in found:
        old = by_address.get(t.address)
        if old is None:
            if len(by_address) >= limit:
                continue
            by_address[t.address] = t
            continue
        sources = tuple(dict.fromkeys([*old.sources, *t.sources]))
        by_address[t.address] = Target(t.address, sources, old.peer_id or t.peer_id, old.name or t.name,
                                       old.transport_key or t.transport_key)
    return list(by_address.values())
