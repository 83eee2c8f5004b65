"""Peer certificates: what the mesh authority signs for each member.

Wire form: ``payload + signature``, where ``payload`` is a msgpack map and
``signature`` is 64 bytes of Ed25519 by the authority over ``DOMAIN + payload``. The
bytes are passed around as they were signed; nothing is ever re-encoded.

Payload map (ONLY APPEND KEYS: unknown keys are tolerated so older peers keep reading
newer certificates)::

    v    int    certificate format version (SUPPORTED_VERSIONS)
    m    bin16  mesh id: SHA-256(MESH_ID_DOMAIN + authority public key)[:16]
    a    bin32  the authority's raw Ed25519 public key
    k    bin32  the peer's raw Ed25519 public key (its peer id is derived from it)
    n    str    the peer's name, 1..64 printable characters
    iat  int    issued at, seconds since the Unix epoch
    exp  int    expires at, seconds since the Unix epoch (> iat)
    s    bin16  serial, random; names this certificate (revocation)
    c    bin    the peer's CurveZMQ public key: 32 bytes, or empty until transport keys exist
    p    bin32  optional: the Ed25519 public key this one replaces (``mesh rotate``): the
                authority says the peer that held ``p`` is now this one, so jobs and
                sessions naming the old peer id follow the new one

``verify_certificate`` checks, in this order, and stops at the first failure (each
failure is a ``CertificateError`` whose ``reason`` is a ``CertReason``):

1. size, before anything is parsed            -> OVERSIZE / MALFORMED
2. msgpack with explicit limits, field types  -> MALFORMED / BAD_VERSION
3. the authority and mesh id are ours          -> OTHER_MESH
4. the authority's signature                  -> BAD_SIGNATURE
5. issued_at - skew <= now                     -> NOT_YET_VALID
6. now < expires_at + skew                     -> EXPIRED

Step 2 runs before the signature on purpose: it reads at most ``MAX_CERT_BYTES`` with
an unpacker that cannot allocate more than that, and it lets a certificate of another
mesh (a neighbour on the same LAN) be told apart from a forgery and counted as such.
Until step 4 passes, fields are only compared with values this peer already holds.
This module is pure: the clock reading ``now`` is passed in.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from mesh.errors import CertificateError
from mesh.identity.keys import Identity, load_public_raw, peer_id_from_public, peer_id_text, verify

CERT_VERSION = 1
SUPPORTED_VERSIONS = range(1, 2)  # certificate versions this build accepts
DOMAIN = b"mesh/cert/v1\0"  # signatures over certificates can never be mistaken for other signatures
MESH_ID_DOMAIN = b"mesh/mesh-id\0"
MESH_ID_BYTES = 16
KEY_BYTES = 32
SERIAL_BYTES = 16
SIGNATURE_BYTES = 64
MAX_CERT_BYTES = 1024  # a certificate is about 250 bytes; anything past this is dropped unread
MAX_CERT_KEYS = 64  # payload map entries: the known nine plus room for appended fields
MAX_NAME_CHARS = 64
MAX_TIME_S = (1 << 63) - 1  # issued_at / expires_at fit a signed 64-bit integer
DEFAULT_SKEW_S = 300.0  # clocks of devices on a LAN may disagree by this much


class CertReason(enum.Enum):
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    OTHER_MESH = "other_mesh"
    BAD_SIGNATURE = "bad_signature"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVOKED = "revoked"  # appended: valid, but the authority revoked it (mesh.identity.revocation)


def rejected(reason: CertReason, detail: str) -> CertificateError:
    """A ``CertificateError`` that says why in ``.reason`` (for counting) and in its text."""
    err = CertificateError(f"certificate refused ({reason.value}): {detail}")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def mesh_id_for(authority_public_raw: bytes) -> bytes:
    """A mesh is named by its authority key: the first 16 bytes of a domain-tagged SHA-256."""
    if len(authority_public_raw) != KEY_BYTES:
        raise CertificateError(f"an authority public key is {KEY_BYTES} bytes, got {len(authority_public_raw)}")
    return hashlib.sha256(MESH_ID_DOMAIN + authority_public_raw).digest()[:MESH_ID_BYTES]


def mesh_id_text(mesh_id: bytes) -> str:
    """The fingerprint people compare and mDNS carries: lowercase base32, like peer ids."""
    return peer_id_text(mesh_id)


def check_name(name: Any) -> str | None:
    """Why ``name`` cannot name a peer, or None when it can."""
    if not isinstance(name, str):
        return "the name must be a string"
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        return f"the name must be 1..{MAX_NAME_CHARS} characters, got {len(name)}"
    if not name.isprintable():
        return "the name must be printable (no control characters)"
    return None


@dataclass(frozen=True)
class Certificate:
    version: int
    mesh_id: bytes
    authority_public: bytes
    peer_public: bytes
    name: str
    issued_at: int
    expires_at: int
    serial: bytes
    curve_public: bytes
    signature: bytes = field(repr=False)
    payload: bytes = field(repr=False)  # the exact signed bytes
    predecessor: bytes = b""  # the public key this one replaced (mesh rotate), or empty

    @property
    def peer_id(self) -> bytes:
        return peer_id_from_public(self.peer_public)

    @property
    def predecessor_id(self) -> bytes | None:
        """The peer id this certificate's peer was before ``mesh rotate``, if it was rotated."""
        return peer_id_from_public(self.predecessor) if self.predecessor else None

    @property
    def peer_id_text(self) -> str:
        return peer_id_text(self.peer_id)

    def to_bytes(self) -> bytes:
        return self.payload + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Certificate:
        """Parse the structure only. Nothing here is trusted: use ``verify_certificate``."""
        doc, payload, signature = unpack_signed(
            data, what="a certificate", max_bytes=MAX_CERT_BYTES, max_keys=MAX_CERT_KEYS,
            rejected_as=lambda kind, detail: rejected(CertReason[kind], detail),
        )
        return _typed(doc, payload, signature)


def unpack_signed(
    data: Any, *, what: str, max_bytes: int, max_keys: int, rejected_as: Callable[[str, str], Exception]
) -> tuple[Any, bytes, bytes]:
    """``(doc, payload, signature)`` of an authority-signed ``payload + signature``
    (certificates, revocations): size checked before anything is parsed, msgpack with
    limits so no header can claim more than ``max_bytes``. Nothing here is trusted.
    ``rejected_as("MALFORMED" | "OVERSIZE", detail)`` makes the caller's typed error."""
    if not isinstance(data, (bytes, bytearray)):
        raise rejected_as("MALFORMED", f"{what} is bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise rejected_as("OVERSIZE", f"{len(data)} bytes > {max_bytes}")
    if len(data) <= SIGNATURE_BYTES:
        raise rejected_as("MALFORMED", "shorter than a signature")
    payload, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    try:
        doc = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, max_str_len=max_bytes, max_bin_len=max_bytes,
            max_array_len=max_bytes, max_map_len=max_keys, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise rejected_as("MALFORMED", f"bad msgpack: {type(e).__name__}") from None
    return doc, payload, signature


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(doc: Any, payload: bytes, signature: bytes) -> Certificate:
    if not isinstance(doc, dict):
        raise rejected(CertReason.MALFORMED, "payload is not a map")
    version = doc.get("v")
    if not _int(version):
        raise rejected(CertReason.MALFORMED, "field 'v' must be an int")
    if version not in SUPPORTED_VERSIONS:
        raise rejected(
            CertReason.BAD_VERSION,
            f"version {version}; this peer reads {SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1}",
        )
    for name, size in (("m", MESH_ID_BYTES), ("a", KEY_BYTES), ("k", KEY_BYTES), ("s", SERIAL_BYTES)):
        value = doc.get(name)
        if not isinstance(value, bytes) or len(value) != size:
            raise rejected(CertReason.MALFORMED, f"field {name!r} must be {size} bytes")
    curve = doc.get("c")
    if not isinstance(curve, bytes) or len(curve) not in (0, KEY_BYTES):
        raise rejected(CertReason.MALFORMED, f"field 'c' must be empty or {KEY_BYTES} bytes")
    predecessor = doc.get("p", b"")
    if not isinstance(predecessor, bytes) or len(predecessor) not in (0, KEY_BYTES):
        raise rejected(CertReason.MALFORMED, f"field 'p' must be {KEY_BYTES} bytes when present")
    if predecessor == doc["k"]:
        raise rejected(CertReason.MALFORMED, "a key cannot replace itself")
    problem = check_name(doc.get("n"))
    if problem:
        raise rejected(CertReason.MALFORMED, problem)
    iat, exp = doc.get("iat"), doc.get("exp")
    if not (_int(iat) and _int(exp) and 0 <= iat < exp <= MAX_TIME_S):
        raise rejected(CertReason.MALFORMED, "issued_at and expires_at must be ints with 0 <= issued_at < expires_at")
    return Certificate(
        version=version,
        mesh_id=doc["m"],
        authority_public=doc["a"],
        peer_public=doc["k"],
        name=doc["n"],
        issued_at=iat,
        expires_at=exp,
        serial=doc["s"],
        curve_public=curve,
        signature=signature,
        payload=payload,
        predecessor=predecessor,
    )


def sign_certificate(
    authority: Identity,
    *,
    peer_public_raw: bytes,
    name: str,
    issued_at: int,
    expires_at: int,
    serial: bytes,
    curve_public: bytes = b"",
    predecessor: bytes = b"",
) -> Certificate:
    """Build and sign one certificate. Pure: the serial and times are passed in."""
    problem = check_name(name)
    if problem:
        raise CertificateError(problem)
    if len(peer_public_raw) != KEY_BYTES:
        raise CertificateError(f"a peer public key is {KEY_BYTES} bytes, got {len(peer_public_raw)}")
    if len(serial) != SERIAL_BYTES:
        raise CertificateError(f"a serial is {SERIAL_BYTES} bytes")
    if len(curve_public) not in (0, KEY_BYTES):
        raise CertificateError(f"a CurveZMQ public key is {KEY_BYTES} bytes (or empty)")
    if len(predecessor) not in (0, KEY_BYTES) or predecessor == bytes(peer_public_raw):
        raise CertificateError(f"a predecessor is another peer's {KEY_BYTES}-byte public key (or empty)")
    if not (_int(issued_at) and _int(expires_at) and 0 <= issued_at < expires_at <= MAX_TIME_S):
        raise CertificateError("need 0 <= issued_at < expires_at")
    authority_public = authority.public_raw
    fields = {
        "v": CERT_VERSION,
        "m": mesh_id_for(authority_public),
        "a": authority_public,
        "k": bytes(peer_public_raw),
        "n": name,
        "iat": issued_at,
        "exp": expires_at,
        "s": bytes(serial),
        "c": bytes(curve_public),
    }
    if predecessor:  # only rotated certificates carry it: older peers' bytes stay as they were
        fields["p"] = bytes(predecessor)
    payload = msgpack.packb(fields, use_bin_type=True)
    data = payload + authority.sign(DOMAIN + payload)
    if len(data) > MAX_CERT_BYTES:  # cannot happen with a 64-character name; guard the invariant
        raise CertificateError(f"certificate would be {len(data)} bytes > {MAX_CERT_BYTES}")
    return Certificate.from_bytes(data)


def check_validity(cert: Certificate, *, now: float, skew_s: float = DEFAULT_SKEW_S) -> None:
    """Steps 5 and 6 alone: for a certificate whose signature was already checked."""
    if now + skew_s < cert.issued_at:
        raise rejected(CertReason.NOT_YET_VALID, f"valid from {cert.issued_at}, now is {now:.0f}; check the clocks")
    if now - skew_s >= cert.expires_at:
        raise rejected(CertReason.EXPIRED, f"expired at {cert.expires_at}, now is {now:.0f}")


def verify_certificate(
    data: bytes,
    *,
    authority_public_raw: bytes,
    now: float,
    skew_s: float = DEFAULT_SKEW_S,
) -> Certificate:
    """Admit a certificate of the mesh named by ``authority_public_raw`` or raise ``CertificateError``."""
    cert = Certificate.from_bytes(data)
    if cert.authority_public != authority_public_raw:
        raise rejected(CertReason.OTHER_MESH, f"issued by mesh {mesh_id_text(cert.mesh_id)}, not this mesh")
    if cert.mesh_id != mesh_id_for(authority_public_raw):
        raise rejected(CertReason.OTHER_MESH, "mesh id does not match this mesh's authority")
    if not verify(load_public_raw(authority_public_raw), cert.signature, DOMAIN + cert.payload):
        raise rejected(CertReason.BAD_SIGNATURE, "not signed by this mesh's authority")
    check_validity(cert, now=now, skew_s=skew_s)
    return cert
