"""Discovery hints and the pure checks that turn an mDNS record into one.

A ``Hint`` says "a peer may be reachable at this address". It is never trust: the peer
is admitted only after it proves a certificate from this mesh's authority over the
connection. Everything here is plain functions over data (no sockets, no clock: ``now``
is passed in), so the rules are unit-tested without a network.

The mDNS record of a peer (service type ``_mesh._tcp.local.``):

- instance name ``<peer id>._mesh._tcp.local.``
- SRV: the peer's RPC port; A: its addresses
- TXT (keys are append-only; unknown keys are ignored so newer peers stay readable):
  ``id``   peer id text (26 chars of lowercase base32, mesh.identity.keys)
  ``mesh`` mesh fingerprint text (lowercase letters and digits, 8..64 chars)
  ``v``    protocol version, decimal
  ``c``    (appended, optional) the peer's CurveZMQ public key, 52 characters of base32
           (``mesh.identity.transport``); a hint only: the handshake fails unless the
           peer holds its secret half, and a member record's certified key wins

Anyone on the LAN can send such records, so every field is checked; a record that fails
is dropped and counted by reason (``DiscoveryStats``), never raised out of the browser.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.identity.keys import PEER_ID_BYTES
from mesh.identity.transport import is_key_text, key_from_text

SERVICE_TYPE = "_mesh._tcp.local."
TXT_ID, TXT_MESH, TXT_VERSION, TXT_CURVE = "id", "mesh", "v", "c"

PEER_ID_CHARS = -(-PEER_ID_BYTES * 8 // 5)  # base32 text length without padding: 26
_PEER_ID = re.compile(rf"[a-z2-7]{{{PEER_ID_CHARS}}}")
_MESH_FP = re.compile(r"[a-z0-9]{8,64}")
_VERSION = re.compile(r"[0-9]{1,5}")
MAX_TXT_BYTES = 1300  # RFC 6763 s6.2: keep TXT small; refuse attacker-sized records
MAX_TXT_KEYS = 32
MAX_ADDRESSES = 16  # addresses kept from one record; the rest are noise or an attack


class Source(enum.Enum):
    MDNS = "mdns"
    SEED = "seed"
    GOSSIP = "gossip"
    REMEMBERED = "remembered"


class DropReason(enum.Enum):
    """Why a record did not become a hint. ONLY APPEND (names appear in metrics)."""

    TOO_LARGE = "too_large"  # TXT over MAX_TXT_BYTES or MAX_TXT_KEYS
    MISSING_FIELD = "missing_field"  # id, mesh or v absent, or a key without a value
    BAD_CHARSET = "bad_charset"  # a value that is not ASCII
    BAD_PEER_ID = "bad_peer_id"
    BAD_MESH = "bad_mesh"
    BAD_VERSION = "bad_version"  # not a decimal int in 1..65535
    UNSUPPORTED_VERSION = "unsupported_version"  # well formed, but not a version we speak
    BAD_PORT = "bad_port"
    NO_ADDRESS = "no_address"  # no usable address in the record
    NAME_MISMATCH = "name_mismatch"  # instance name does not match the id in TXT
    OTHER_MESH = "other_mesh"  # a well-formed peer of another mesh: ignored, not admitted
    OWN = "own"  # our own announcement, heard back
    RESOLVE_FAILED = "resolve_failed"  # the service did not answer in time
    OVERLOAD = "overload"  # too many records in flight; shed
    BAD_TRANSPORT_KEY = "bad_transport_key"  # a "c" that is not a transport key


@dataclass(frozen=True)
class Hint:
    """Where a peer may be reached. Unverified: only the handshake admits a peer.

    ``peer_id``, ``mesh`` and ``version`` are ``None`` when the source does not tell
    (a ``--join`` seed is just an address)."""

    address: str  # "tcp://host:port" (IPv6 hosts in brackets), the one to try first
    source: Source
    seen_at: float  # Unix seconds when this was learned
    peer_id: str | None = None
    mesh: str | None = None
    version: int | None = None
    alternates: tuple[str, ...] = ()  # other addresses of the same record, to try next
    transport_key: bytes | None = None  # the CurveZMQ key the peer says it has (unverified)


class DiscoveryStats:
    """Counts of hints accepted and records dropped, by reason (bounded: one key per reason)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.dropped: Counter[DropReason] = Counter()
        self.gone = 0

    def record(self, outcome: Hint | DropReason) -> None:
        if isinstance(outcome, DropReason):
            self.dropped[outcome] += 1
        else:
            self.accepted += 1

    def __getitem__(self, reason: DropReason) -> int:
        return self.dropped[reason]

    def as_dict(self) -> dict[str, int]:
        """Flat counters, e.g. for /metrics or ``mesh status``."""
        out = {"accepted": self.accepted, "gone": self.gone}
        out.update({f"dropped_{r.value}": n for r, n in sorted(self.dropped.items(), key=lambda kv: kv[0].value)})
        return out


def is_peer_id(text: str) -> bool:
    return bool(_PEER_ID.fullmatch(text))


def is_mesh_fingerprint(text: str) -> bool:
    return bool(_MESH_FP.fullmatch(text))


def instance_name(peer_id: str) -> str:
    """The mDNS instance name a peer announces under: one per peer id, so a second
    process with the same identity fails probing instead of shadowing the first."""
    return f"{peer_id}.{SERVICE_TYPE}"


def peer_id_of_name(name: str) -> str | None:
    """The peer id in an instance name, or None if it is not one of ours."""
    if not name.lower().endswith("." + SERVICE_TYPE):
        return None
    label = name[: -len(SERVICE_TYPE) - 1]
    return label if is_peer_id(label) else None


def txt_for(*, peer_id: str, mesh: str, version: int, transport_key: str | None = None) -> dict[str, str]:
    """The TXT properties this peer announces. Raises ValueError on values that our own
    parser would drop (so a misconfigured peer fails at start, not silently)."""
    if not is_peer_id(peer_id):
        raise ValueError(f"not a peer id: {peer_id!r}")
    if not is_mesh_fingerprint(mesh):
        raise ValueError(f"not a mesh fingerprint (8..64 of a-z, 0-9): {mesh!r}")
    if not 1 <= version <= 65535:
        raise ValueError(f"protocol version out of range: {version}")
    txt = {TXT_ID: peer_id, TXT_MESH: mesh, TXT_VERSION: str(version)}
    if transport_key is not None:
        if not is_key_text(transport_key):
            raise ValueError(f"not a transport key: {transport_key!r}")
        txt[TXT_CURVE] = transport_key
    return txt


def tcp_address(host: str, port: int) -> str:
    """``tcp://host:port`` as ZeroMQ wants it (IPv6 literal in brackets)."""
    if ":" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def _usable(addr: str) -> str | None:
    """Normalised text of an address a peer can dial, or None (unparseable, unspecified,
    multicast, or IPv6 link-local, which needs a scope the record does not carry)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast or (ip.version == 6 and ip.is_link_local):
        return None
    return str(ip)


def hint_from_record(
    *,
    name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Iterable[str],
    port: int | None,
    mesh: str,
    own_peer_id: str | None,
    now: float,
    versions: range = range(1, 65536),
) -> Hint | DropReason:
    """Check one resolved mDNS service; return a hint or why it was dropped.

    ``mesh`` is our mesh fingerprint: a well-formed record of another mesh is
    ``OTHER_MESH``; ``versions`` are the protocol versions we speak. Order of checks:
    size first (never walk an attacker-sized record), then each field, then policy, so
    a malformed record of another mesh counts as malformed."""
    if len(properties) > MAX_TXT_KEYS:
        return DropReason.TOO_LARGE
    size = sum(len(k) + 1 + len(v or b"") for k, v in properties.items())
    if size > MAX_TXT_BYTES:
        return DropReason.TOO_LARGE

    fields: dict[str, str] = {}
    for key in (TXT_ID, TXT_MESH, TXT_VERSION):
        raw = properties.get(key.encode())
        if not raw:  # absent, a bare key without "=", or empty
            return DropReason.MISSING_FIELD
        try:
            fields[key] = raw.decode("ascii")
        except UnicodeDecodeError:
            return DropReason.BAD_CHARSET
    peer_id, fp, version_text = fields[TXT_ID], fields[TXT_MESH], fields[TXT_VERSION]
    if not is_peer_id(peer_id):
        return DropReason.BAD_PEER_ID
    if not is_mesh_fingerprint(fp):
        return DropReason.BAD_MESH
    if not _VERSION.fullmatch(version_text) or not 1 <= int(version_text) <= 65535:
        return DropReason.BAD_VERSION
    version = int(version_text)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        return DropReason.BAD_PORT
    if peer_id_of_name(name) != peer_id:
        return DropReason.NAME_MISMATCH
    transport_key = None
    raw_curve = properties.get(TXT_CURVE.encode())
    if raw_curve is not None:
        text = raw_curve.decode("ascii", "replace")
        if not is_key_text(text):
            return DropReason.BAD_TRANSPORT_KEY
        transport_key = key_from_text(text)

    usable: list[str] = []
    for addr in addresses:
        a = _usable(addr)
        if a is not None and a not in usable:
            usable.append(a)
            if len(usable) >= MAX_ADDRESSES:
                break
    if not usable:
        return DropReason.NO_ADDRESS

    if own_peer_id is not None and peer_id == own_peer_id:
        return DropReason.OWN
    if fp != mesh:
        return DropReason.OTHER_MESH
    if version not in versions:
        return DropReason.UNSUPPORTED_VERSION

    # IPv4 before IPv6, loopback last: the address most likely to work from another host
    usable.sort(key=lambda a: (ipaddress.ip_address(a).is_loopback, ":" in a))
    addrs = [tcp_address(a, port) for a in usable]
    return Hint(
        address=addrs[0],
        alternates=tuple(addrs[1:]),
        source=Source.MDNS,
        seen_at=now,
        peer_id=peer_id,
        mesh=fp,
        version=version,
        transport_key=transport_key,
    )
