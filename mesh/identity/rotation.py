"""Key rotation (``mesh rotate``): a member trades its identity and transport keys for
new ones, keeping its name and its place in the mesh.

    member (keys O, certificate C_O)                     authority holder
    new Ed25519 key N, new Curve25519 key T
    journal {N, T} to rotation.json  (before asking: a crash resumes with the same keys)
    call "mesh.rotate" {k: N, c: T, p: proof}   --->    handle_rotate(args, current=C_O, ...)
         proof = N's signature over                      C_O: the caller's certificate as the
         PROOF_DOMAIN + mesh id + O + N + T              envelope admitted it (valid, of this
                                                         mesh, not revoked); the proof shows the
                                                         caller holds N; rotations.json says O
                                                         was not rotated to another key
    accept_rotation(reply, ...)                 <---    {certificate: C_N (key N, curve T,
    journal += C_N, R                                     same name, p = O),
    install N, T, C_N; serve as N;                        revocation: R (of O, signed now)}
    publish R (O is refused mesh-wide); drop the journal

Why the authority hands the revocation back instead of spreading it: O's calls in flight
(answers it is still streaming, signed by O) must finish before O is refused, and only
the rotating peer knows when they have. If it dies before publishing, the journal
publishes R at its next start.

Attack: a thief holding O's key could rotate first and obtain a certificate for its own
key. The authority keeps which key each old key was rotated to (``RotationLog``) and
refuses a second rotation to another key, naming the first: the rightful owner's
``mesh rotate`` then says so, and ``mesh revoke`` of the thief's peer is the answer.

Pure: ``now`` is passed in; the RPC and the peer's switch are in ``mesh.identity.rotation_service``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh.errors import CertificateError, IdentityError, InvalidRequest
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import (
    DEFAULT_SKEW_S,
    KEY_BYTES,
    SIGNATURE_BYTES,
    Certificate,
    verify_certificate,
)
from mesh.identity.files import read_private, write_atomic
from mesh.identity.keys import Identity, load_public_raw, peer_id_from_public, peer_id_text, verify
from mesh.identity.revocation import Revocation, sign_revocation, verify_revocation
from mesh.identity.transport import TransportKeys

ROTATE_METHOD = "mesh.rotate"  # unary, at a peer holding the authority key: {k, c, p} -> {certificate, revocation}
PROOF_DOMAIN = b"mesh/rotate/v1\0"  # the new key's signature means only this
DEFAULT_MAX_ROTATIONS = 4096  # entries of the authority's rotation log
MAX_JOURNAL_BYTES = 16 * 1024


def proof_message(*, mesh_id: bytes, old_public: bytes, new_public: bytes, new_curve: bytes) -> bytes:
    return PROOF_DOMAIN + mesh_id + old_public + new_public + new_curve


def rotation_request(new: Identity, new_curve: bytes, *, old_public: bytes, mesh_id: bytes) -> dict[str, bytes]:
    """The arguments of ``mesh.rotate``: the new keys and the new key's proof of possession."""
    proof = new.sign(proof_message(mesh_id=mesh_id, old_public=old_public, new_public=new.public_raw,
                                   new_curve=new_curve))
    return {"k": new.public_raw, "c": bytes(new_curve), "p": proof}


class RotationLog:
    """The authority's record of rotations: old public key -> (new public key, keep until).

    Bounded by ``max_entries`` (oldest dropped) and by time: an entry is dropped once every
    certificate of the old key has expired, since no such key can ask again by then."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ROTATIONS) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[bytes, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def rotated_to(self, old_public: bytes) -> bytes | None:
        entry = self._entries.get(old_public)
        return None if entry is None else entry[0]

    def record(self, old_public: bytes, new_public: bytes, *, until: int) -> None:
        self._entries.pop(old_public, None)
        self._entries[old_public] = (new_public, until)
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))

    def prune(self, *, now: float) -> int:
        gone = [k for k, (_, until) in self._entries.items() if until <= now]
        for k in gone:
            del self._entries[k]
        return len(gone)

    def to_json(self) -> str:
        return json.dumps({"rotations": [
            {"old": _b64(old), "new": _b64(new), "until": until} for old, (new, until) in self._entries.items()
        ]}, indent=1)

    @classmethod
    def load(cls, path: Path, *, max_entries: int = DEFAULT_MAX_ROTATIONS) -> RotationLog:
        log = cls(max_entries=max_entries)
        if not path.exists():
            return log
        data = read_private(path, max_bytes=max_entries * 256 + 1024, what="rotation log")
        try:
            doc = json.loads(data)
            for e in doc["rotations"]:
                old, new, until = _unb64(e["old"]), _unb64(e["new"]), e["until"]
                if len(old) == len(new) == KEY_BYTES and isinstance(until, int):
                    log.record(old, new, until=until)
        except (ValueError, KeyError, TypeError) as e:
            raise IdentityError(f"rotation log {path} is malformed ({e}); move it away") from None
        return log

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_json().encode("utf-8"))


def handle_rotate(
    args: Any,
    current: Certificate | None,
    *,
    authority: MeshAuthority,
    log: RotationLog,
    now: float,
    ttl_s: float = DEFAULT_CERT_TTL_S,
) -> dict[str, bytes]:
    """Issue the caller's certificate for its new keys, and the revocation of its old key.

    ``current``: the caller's certificate as the envelope admitted it (None when it had
    none valid). Records the rotation in ``log``; the caller saves the log."""
    if current is None:
        raise CertificateError("rotation needs a current, valid certificate of this mesh: join with a token instead")
    if current.authority_public != authority.public_raw:
        raise CertificateError("that certificate is not of this mesh")
    if not isinstance(args, dict):
        raise InvalidRequest("mesh.rotate takes {k, c, p}")
    new_public, new_curve, proof = args.get("k"), args.get("c"), args.get("p")
    for name, value, size in (("k", new_public, KEY_BYTES), ("c", new_curve, KEY_BYTES), ("p", proof, SIGNATURE_BYTES)):
        if not isinstance(value, bytes) or len(value) != size:
            raise InvalidRequest(f"mesh.rotate: {name!r} must be {size} bytes")
    if new_public == current.peer_public:
        raise InvalidRequest("mesh.rotate: the new key is the current one")
    if new_curve == current.curve_public:
        raise InvalidRequest("mesh.rotate: the new transport key is the current one")
    try:
        new_key = load_public_raw(new_public)
    except IdentityError:
        raise InvalidRequest("mesh.rotate: 'k' is not an Ed25519 public key") from None
    message = proof_message(mesh_id=current.mesh_id, old_public=current.peer_public, new_public=new_public,
                            new_curve=new_curve)
    if not verify(new_key, proof, message):
        raise InvalidRequest("mesh.rotate: the proof is not the new key's signature")
    earlier = log.rotated_to(current.peer_public)
    if earlier is not None and earlier != new_public:
        raise CertificateError(
            f"the key of {current.name} ({current.peer_id_text[:12]}) was already rotated to peer "
            f"{peer_id_text(peer_id_from_public(earlier))[:12]}; if that was not you, revoke that peer "
            "(`mesh revoke` where the mesh was created) and join this device again with a new token"
        )
    cert = authority.issue(new_public, current.name, now=now, ttl_s=ttl_s, curve_public=new_curve,
                           predecessor=current.peer_public)
    # Every certificate of the old key issued until now has expired by ``until``.
    until = max(current.expires_at, int(now) + DEFAULT_CERT_TTL_S) + 1
    rev = sign_revocation(authority.identity, peer_public_raw=current.peer_public, revoked_at=int(now),
                          until=until, serial=current.serial, name=current.name)
    log.record(current.peer_public, new_public, until=until)
    return {"certificate": cert, "revocation": rev.to_bytes()}


def accept_rotation(
    reply: Any,
    *,
    current: Certificate,
    new_public: bytes,
    new_curve: bytes,
    authority_public_raw: bytes,
    now: float,
    skew_s: float = DEFAULT_SKEW_S,
) -> tuple[Certificate, Revocation]:
    """Check a ``mesh.rotate`` reply: this mesh's authority certifies the new keys under the
    same name as the successor of ``current``, and revokes ``current``'s key."""
    if not isinstance(reply, dict) or not isinstance(reply.get("certificate"), bytes) \
            or not isinstance(reply.get("revocation"), bytes):
        raise CertificateError("malformed rotation reply")
    cert = verify_certificate(reply["certificate"], authority_public_raw=authority_public_raw, now=now, skew_s=skew_s)
    if (cert.peer_public, cert.curve_public, cert.name, cert.predecessor) != (
            new_public, new_curve, current.name, current.peer_public):
        raise CertificateError("the rotation reply certifies something else than this peer's new keys")
    rev = verify_revocation(reply["revocation"], authority_public_raw=authority_public_raw, now=now, skew_s=skew_s)
    if not rev.revokes(current):
        raise CertificateError("the rotation reply's revocation does not revoke the old key")
    return cert, rev


@dataclass(frozen=True)
class RotationJournal:
    """A rotation under way, in ``rotation.json`` (0600): the new keys from before the
    request until the old key's revocation is published."""

    old_public: bytes
    identity: Identity
    transport: TransportKeys
    certificate: bytes = b""  # set once the authority answered
    revocation: bytes = b""

    @classmethod
    def begin(cls, old_public: bytes) -> RotationJournal:
        return cls(old_public=old_public, identity=Identity.generate(), transport=TransportKeys.generate())

    def issued(self, cert: Certificate, rev: Revocation) -> RotationJournal:
        return replace(self, certificate=cert.to_bytes(), revocation=rev.to_bytes())

    @property
    def old_peer_id_text(self) -> str:
        return peer_id_text(peer_id_from_public(self.old_public))

    def to_bytes(self) -> bytes:
        return json.dumps({
            "old": _b64(self.old_public), "identity": self.identity.to_pem().decode("ascii"), "transport": _b64(self.transport.secret),
            "certificate": _b64(self.certificate), "revocation": _b64(self.revocation),
        }, indent=1).encode("utf-8")

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> RotationJournal | None:
        if not path.exists():
            return None
        data = read_private(path, max_bytes=MAX_JOURNAL_BYTES, what="rotation journal")
        try:
            doc = json.loads(data)
            journal = cls(
                old_public=_unb64(doc["old"]), identity=Identity.from_pem(doc["identity"].encode("ascii")),
                transport=TransportKeys.from_secret(_unb64(doc["transport"])),
                certificate=_unb64(doc["certificate"]), revocation=_unb64(doc["revocation"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, IdentityError) as e:
            raise IdentityError(f"rotation journal {path} is malformed ({e}); move it away and run `mesh rotate` "
                                "again") from None
        if len(journal.old_public) != KEY_BYTES:
            raise IdentityError(f"rotation journal {path} is malformed (old key); move it away")
        return journal


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None

