"""The member record: the owner-signed description of one member.

A record says who a member is and what it offers: peer id, incarnation, version, name,
addresses, ``meta`` (capabilities, models, load: msgpack-native values, opaque to
gossip), ``credential`` (the owner's certificate, opaque to gossip) and ``left``. Only
its owner can produce one: ``signature`` covers ``RECORD_DOMAIN + body``, where
``body`` is the exact msgpack bytes carried on the wire. Records travel as the pair
``[body, signature]`` and are forwarded byte for byte, never re-encoded, so fields a
newer peer adds survive an older peer in the middle (unknown body keys are ignored).

Ordering (``key``): ``(incarnation, left, version)``.

* ``incarnation`` is SWIM's: it changes only to refute a suspicion or death, or to
  replace the record of a previous life after a restart. Suspect and dead assertions
  name ``(peer_id, incarnation)``.
* ``version`` counts the owner's re-signings within its life (meta changes, such as load
  about once a second). It never goes down, so the newest record always sorts last,
  and a meta refresh does not touch the incarnation, so it neither refutes nor dodges
  a suspicion.
* ``left`` is final for its incarnation: it outranks any version of that incarnation.

Verification is the shell's (``verify_record``): the signature against the key in
``credential``, and that ``peer_id`` is the id of that key. This module only bounds and
types the fields; ``from_parts`` raises ``GossipError`` for anything it refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.gossip import wire
from mesh.gossip.errors import GossipError, GossipReason
from mesh.rpc.limits import depth_exceeds

RECORD_DOMAIN = b"mesh/member/v1\0"
PEER_ID_BYTES = 16
MAX_RECORD_BYTES = 8192  # body + signature
MAX_NAME_CHARS = 64
MAX_ADDRESSES = 8
MAX_ADDRESS_CHARS = 256
MAX_CREDENTIAL_BYTES = 2048  # a certificate is about 250 bytes
MAX_SIGNATURE_BYTES = 128
MAX_META_DEPTH = 8

Sign = Callable[[bytes], bytes]


@dataclass(frozen=True, eq=False)
class MemberRecord:
    peer_id: bytes
    incarnation: int
    version: int
    name: str
    addresses: tuple[str, ...]
    meta: dict[str, Any]  # treat as read-only: it is covered by the signature
    credential: bytes = field(repr=False)
    left: bool
    signature: bytes = field(repr=False)
    body: bytes = field(repr=False)  # the exact signed bytes

    @property
    def key(self) -> tuple[int, bool, int]:
        """Newer records sort higher; see the module doc."""
        return (self.incarnation, self.left, self.version)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.signature)

    def signed_payload(self) -> bytes:
        """What ``signature`` must verify over, with the owner's key."""
        return RECORD_DOMAIN + self.body

    def to_parts(self) -> list[bytes]:
        return [self.body, self.signature]

    def to_wire(self) -> bytes:
        return wire.pack(self.to_parts())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemberRecord):
            return NotImplemented
        return self.body == other.body and self.signature == other.signature

    def __hash__(self) -> int:
        return hash((self.body, self.signature))

    @classmethod
    def create(
        cls,
        *,
        peer_id: bytes,
        incarnation: int = 0,
        version: int = 0,
        name: str,
        addresses: tuple[str, ...] | list[str],
        meta: dict[str, Any] | None = None,
        credential: bytes = b"",
        left: bool = False,
        sign: Sign,
    ) -> MemberRecord:
        """Build and sign a record. Raises ``GossipError`` if a field is out of bounds."""
        try:
            body = wire.pack(
                {
                    "id": peer_id,
                    "inc": incarnation,
                    "ver": version,
                    "name": name,
                    "addr": list(addresses),
                    "meta": meta or {},
                    "cred": credential,
                    "left": left,
                }
            )
        except (TypeError, ValueError, OverflowError) as e:
            raise wire.bad(f"record field not msgpack-native: {e}") from None
        return cls.from_parts([body, sign(RECORD_DOMAIN + body)])

    def resigned(self, *, sign: Sign, **changes: Any) -> MemberRecord:
        """A copy with ``changes`` applied, signed again (the owner's own record only)."""
        fields = {
            "peer_id": self.peer_id,
            "incarnation": self.incarnation,
            "version": self.version,
            "name": self.name,
            "addresses": self.addresses,
            "meta": self.meta,
            "credential": self.credential,
            "left": self.left,
        }
        fields.update(changes)
        return MemberRecord.create(sign=sign, **fields)

    @classmethod
    def from_wire(cls, data: bytes) -> MemberRecord:
        return cls.from_parts(wire.unpack(data, max_bytes=MAX_RECORD_BYTES + 16))

    @classmethod
    def from_parts(cls, parts: Any) -> MemberRecord:
        """Type-check ``[body, signature]`` (as carried in messages). Does not verify."""
        if not isinstance(parts, list) or len(parts) < 2:
            raise wire.bad("a record is [body, signature]")
        body = wire.blob(parts[0], "record body")
        signature = wire.blob(parts[1], "record signature", max_size=MAX_SIGNATURE_BYTES)
        if len(body) + len(signature) > MAX_RECORD_BYTES:
            raise GossipError(GossipReason.OVERSIZE, f"record of {len(body) + len(signature)} bytes")
        doc = wire.unpack(body, max_bytes=MAX_RECORD_BYTES)
        if not isinstance(doc, dict):
            raise wire.bad("record body must be a map")
        peer_id = wire.blob(doc.get("id"), "record id", size=PEER_ID_BYTES)
        name = wire.get(doc, "name", str)
        if not 1 <= len(name) <= MAX_NAME_CHARS:
            raise wire.bad(f"record name must be 1..{MAX_NAME_CHARS} characters")
        addresses = wire.get(doc, "addr", list)
        if len(addresses) > MAX_ADDRESSES:
            raise wire.bad(f"more than {MAX_ADDRESSES} addresses")
        for a in addresses:
            if not isinstance(a, str) or not 0 < len(a) <= MAX_ADDRESS_CHARS or "://" not in a:
                raise wire.bad("an address is a 'scheme://host:port' string")
        meta = wire.get(doc, "meta", dict)
        if depth_exceeds(meta, MAX_META_DEPTH):
            raise wire.bad(f"meta nested deeper than {MAX_META_DEPTH}")
        return cls(
            peer_id=peer_id,
            incarnation=wire.uint(doc.get("inc"), "incarnation"),
            version=wire.uint(doc.get("ver"), "version"),
            name=name,
            addresses=tuple(addresses),
            meta=meta,
            credential=wire.blob(doc.get("cred"), "credential", max_size=MAX_CREDENTIAL_BYTES),
            left=wire.get(doc, "left", bool),
            signature=signature,
            body=bytes(body),
        )


class RecordCache:
    """Parsed records by their exact bytes, so the same record heard again is not re-parsed.

    Each member hears each piece of news several times (``retransmit_limit``); parsing is
    pure, so a hit returns the same immutable ``MemberRecord``. Bounded: cleared when it
    reaches ``max_entries`` (a flood of distinct records costs at most one parse each).
    Only well-formed records are cached; refusals raise every time.
    """

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._records: dict[tuple[bytes, bytes], MemberRecord] = {}

    def parse(self, parts: Any) -> MemberRecord:
        if isinstance(parts, list) and len(parts) >= 2 and isinstance(parts[0], bytes) and isinstance(parts[1], bytes):
            key = (parts[0], parts[1])
            hit = self._records.get(key)
            if hit is not None:
                return hit
            record = MemberRecord.from_parts(parts)
            if len(self._records) >= self.max_entries:
                self._records.clear()
            self._records[key] = record
            return record
        return MemberRecord.from_parts(parts)
