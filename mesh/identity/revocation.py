"""Revocations: the mesh authority's word that a member's key is no longer a member.

Wire form: ``payload + signature``, like a certificate, with its own signature domain
(``DOMAIN``) so a revocation can never be mistaken for a certificate or any other
signed thing. Payload map (ONLY APPEND KEYS: unknown keys are tolerated)::

    v    int    revocation format version (SUPPORTED_VERSIONS)
    m    bin16  mesh id (of the authority that signs it)
    k    bin32  the revoked peer's Ed25519 public key
    s    bin    the serial of the certificate that prompted it (16 bytes), or empty
    n    str    the revoked peer's name as its certificate says (display only), or empty
    t    int    revoked at, seconds since the Unix epoch
    u    int    keep until, seconds: every certificate it refuses has expired by then (> t)

What it refuses: every certificate of key ``k`` issued at or before ``t`` (so also a
renewal the peer obtained just before, and the certificate named by ``s``). A
certificate issued for the same key later (the operator gave the device a new join
token on purpose) is not refused. Past ``u`` nothing it refuses can be valid any more,
so it is dropped: that is what bounds the list.

``verify_revocation`` checks, in order, stopping at the first failure (a
``CertificateError`` whose ``reason`` is a ``RevReason``): size before parsing
(OVERSIZE / MALFORMED), msgpack with explicit limits and field types (MALFORMED /
BAD_VERSION), the mesh (OTHER_MESH), the authority's signature (BAD_SIGNATURE), and
``now < u + skew`` (EXPIRED: harmless, just no longer needed). Pure: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from mesh.errors import CertificateError, IdentityError
from mesh.identity.certificate import (
    DEFAULT_SKEW_S,
    KEY_BYTES,
    MAX_NAME_CHARS,
    MAX_TIME_S,
    MESH_ID_BYTES,
    SERIAL_BYTES,
    Certificate,
    mesh_id_for,
    unpack_signed,
)
from mesh.identity.files import read_private, write_atomic
from mesh.identity.keys import Identity, load_public_raw, peer_id_from_public, peer_id_text, verify

REVOCATION_VERSION = 1
SUPPORTED_VERSIONS = range(1, 2)
DOMAIN = b"mesh/revocation/v1\0"  # never the certificate's domain: one signature, one meaning
MAX_REVOCATION_BYTES = 512  # one is about 200 bytes
MAX_REVOCATION_KEYS = 32  # the seven known plus appended ones
DEFAULT_MAX_REVOCATIONS = 2048  # a list of them is at most ~0.5 MB: one frame carries it whole


class RevReason(enum.Enum):
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    OTHER_MESH = "other_mesh"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"


def _rejected(reason: RevReason, detail: str) -> CertificateError:
    err = CertificateError(f"revocation refused ({reason.value}): {detail}")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Revocation:
    version: int
    mesh_id: bytes
    peer_public: bytes
    serial: bytes
    name: str
    revoked_at: int
    until: int
    signature: bytes = field(repr=False)
    payload: bytes = field(repr=False)

    @property
    def peer_id(self) -> bytes:
        return peer_id_from_public(self.peer_public)

    @property
    def peer_id_text(self) -> str:
        return peer_id_text(self.peer_id)

    @property
    def ident(self) -> bytes:
        """Names this revocation (its exact bytes): duplicates are recognised by it."""
        return hashlib.sha256(self.to_bytes()).digest()[:16]

    def to_bytes(self) -> bytes:
        return self.payload + self.signature

    def revokes(self, cert: Certificate) -> bool:
        return cert.peer_public == self.peer_public and cert.issued_at <= self.revoked_at

    def summary(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id_text, "name": self.name, "serial": self.serial.hex(),
            "revoked_at": self.revoked_at, "until": self.until,
        }

    @classmethod
    def from_bytes(cls, data: Any) -> Revocation:
        """Parse the structure only; nothing here is trusted (see ``verify_revocation``)."""
        doc, payload, signature = unpack_signed(
            data, what="a revocation", max_bytes=MAX_REVOCATION_BYTES, max_keys=MAX_REVOCATION_KEYS,
            rejected_as=lambda kind, detail: _rejected(RevReason[kind], detail),
        )
        return _typed(doc, payload, signature)


def _typed(doc: Any, payload: bytes, signature: bytes) -> Revocation:
    if not isinstance(doc, dict):
        raise _rejected(RevReason.MALFORMED, "payload is not a map")
    version = doc.get("v")
    if not _int(version):
        raise _rejected(RevReason.MALFORMED, "field 'v' must be an int")
    if version not in SUPPORTED_VERSIONS:
        raise _rejected(RevReason.BAD_VERSION, f"version {version}")
    for name, sizes in (("m", (MESH_ID_BYTES,)), ("k", (KEY_BYTES,)), ("s", (0, SERIAL_BYTES))):
        value = doc.get(name)
        if not isinstance(value, bytes) or len(value) not in sizes:
            raise _rejected(RevReason.MALFORMED, f"field {name!r} must be {' or '.join(map(str, sizes))} bytes")
    name = doc.get("n")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise _rejected(RevReason.MALFORMED, f"field 'n' must be printable text of at most {MAX_NAME_CHARS} characters")
    t, u = doc.get("t"), doc.get("u")
    if not (_int(t) and _int(u) and 0 <= t < u <= MAX_TIME_S):
        raise _rejected(RevReason.MALFORMED, "revoked_at and until must be ints with 0 <= revoked_at < until")
    return Revocation(version, doc["m"], doc["k"], doc["s"], name, t, u, signature, payload)


def sign_revocation(
    authority: Identity, *, peer_public_raw: bytes, revoked_at: int, until: int, serial: bytes = b"", name: str = ""
) -> Revocation:
    """Build and sign one revocation. Pure: the times are passed in."""
    load_public_raw(peer_public_raw)  # a malformed key is refused before anything is signed
    payload = msgpack.packb(
        {"v": REVOCATION_VERSION, "m": mesh_id_for(authority.public_raw), "k": bytes(peer_public_raw),
         "s": bytes(serial), "n": name, "t": revoked_at, "u": until},
        use_bin_type=True,
    )
    doc = msgpack.unpackb(payload, raw=False)
    rev = _typed(doc, payload, authority.sign(DOMAIN + payload))  # the same checks a receiver applies
    if len(rev.to_bytes()) > MAX_REVOCATION_BYTES:  # cannot happen with a 64-character name
        raise CertificateError("revocation too large")
    return rev


def verify_revocation(
    data: Any, *, authority_public_raw: bytes, now: float, skew_s: float = DEFAULT_SKEW_S
) -> Revocation:
    """Admit a revocation signed by the authority of this mesh, or raise ``CertificateError``."""
    rev = Revocation.from_bytes(data)
    if rev.mesh_id != mesh_id_for(authority_public_raw):
        raise _rejected(RevReason.OTHER_MESH, "issued for another mesh")
    if not verify(load_public_raw(authority_public_raw), rev.signature, DOMAIN + rev.payload):
        raise _rejected(RevReason.BAD_SIGNATURE, "not signed by this mesh's authority")
    if now - skew_s >= rev.until:
        raise _rejected(RevReason.EXPIRED, "every certificate it names has expired")
    return rev


class RevocationList:
    """The revocations this peer holds, verified, by peer key. Bounded (``max_entries``).

    Only verified revocations enter (``add`` verifies), so filling the list takes the
    authority's signature. Past ``until`` an entry is dropped (``prune``). Past the cap
    the entry that expires soonest goes first (the least harm if it is still needed);
    the authority's own tooling refuses to issue into a full list (``full``).
    """

    def __init__(
        self, authority_public_raw: bytes, *, max_entries: int = DEFAULT_MAX_REVOCATIONS,
        skew_s: float = DEFAULT_SKEW_S,
    ) -> None:
        self.authority_public_raw = bytes(authority_public_raw)
        self.max_entries = max_entries
        self.skew_s = skew_s
        self._by_key: dict[bytes, Revocation] = {}  # peer public key -> the latest revocation of it
        self._peer_ids: set[bytes] = set()  # of the revoked keys: a membership test per bulk piece
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(sorted(self._by_key.values(), key=lambda r: (r.revoked_at, r.peer_public)))

    @property
    def full(self) -> bool:
        return len(self._by_key) >= self.max_entries

    def add(self, data: bytes, *, now: float) -> Revocation | None:
        """Verify and keep a revocation; returns it when it is news (None: already held)."""
        rev = verify_revocation(data, authority_public_raw=self.authority_public_raw, now=now, skew_s=self.skew_s)
        held = self._by_key.get(rev.peer_public)
        if held is not None and (held.revoked_at, held.until) >= (rev.revoked_at, rev.until):
            return None  # a later revocation of the same key covers everything this one does
        self._by_key[rev.peer_public] = rev
        self._peer_ids.add(rev.peer_id)
        while len(self._by_key) > self.max_entries:
            victim = min(self._by_key.values(), key=lambda r: (r.until, r.peer_public))
            del self._by_key[victim.peer_public]
            self._peer_ids.discard(victim.peer_id)
            self.evictions += 1
        return rev if rev.peer_public in self._by_key else None

    def add_many(self, items: Iterable[bytes], *, now: float) -> tuple[list[Revocation], int]:
        """Add each; returns (the new ones, how many were refused)."""
        new, refused = [], 0
        for data in items:
            try:
                rev = self.add(data, now=now)
            except CertificateError:
                refused += 1
                continue
            if rev is not None:
                new.append(rev)
        return new, refused

    def revocation_for(self, cert: Certificate) -> Revocation | None:
        rev = self._by_key.get(cert.peer_public)
        return rev if rev is not None and rev.revokes(cert) else None

    def revokes(self, cert: Certificate) -> bool:
        return self.revocation_for(cert) is not None

    def revoked_peer_ids(self) -> set[bytes]:
        return set(self._peer_ids)

    def revokes_peer(self, peer_id: bytes) -> bool:
        """Whether a key of ``peer_id`` is revoked: one set lookup (safe from another
        thread while the loop changes the list)."""
        return peer_id in self._peer_ids

    def prune(self, *, now: float) -> int:
        gone = [k for k, r in self._by_key.items() if now - self.skew_s >= r.until]
        for k in gone:
            self._peer_ids.discard(self._by_key.pop(k).peer_id)
        return len(gone)

    def digest(self) -> bytes:
        """16 bytes naming the whole list: equal lists, equal digests (anti-entropy)."""
        h = hashlib.sha256(b"mesh/identity/revocation_service\0")
        for ident in sorted(r.ident for r in self._by_key.values()):
            h.update(ident)
        return h.digest()[:16]

    def to_wire(self) -> list[bytes]:
        return [r.to_bytes() for r in self]


# --- the file: revocations.json in the data dir (0600, written atomically) ---------------

REVOCATIONS_FILE_VERSION = 1
MAX_REVOCATIONS_FILE_BYTES = 2 << 20


def save_revocations(path, revocations: RevocationList) -> None:
    """``{"version": 1, "revocations": ["<base64>", ...]}``; only the peer writes it."""
    doc = {
        "version": REVOCATIONS_FILE_VERSION,
        "revocations": [base64.b64encode(b).decode("ascii") for b in revocations.to_wire()],
    }
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))


def load_revocations(path, revocations: RevocationList, *, now: float) -> int:
    """Add the revocations saved at ``path`` (each verified again; expired ones dropped).
    Returns how many were refused. A missing file is an empty list."""
    try:
        data = read_private(path, max_bytes=MAX_REVOCATIONS_FILE_BYTES, what="revocation list")
    except FileNotFoundError:
        return 0
    try:
        doc = json.loads(data)
        items = doc["revocations"] if doc.get("version") == REVOCATIONS_FILE_VERSION else None
        if not isinstance(items, list):
            raise ValueError("not a version 1 revocation list")
        blobs = [base64.b64decode(s, validate=True) for s in items]
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as e:
        raise IdentityError(f"{path}: not a revocation list ({e}); move it away") from None
    _, refused = revocations.add_many(blobs, now=now)
    return refused
