"""This peer's membership of a mesh, kept in ``mesh.json`` in its data dir.

What a peer needs to take part in a mesh without ever holding the authority's private
key: the mesh id, the authority's public key (to verify everyone else's certificate),
its own certificate, its name, and seed endpoints to reach the mesh where mDNS cannot.

File format (JSON, 0600, written atomically)::

    {"version": 1,
     "mesh_id": "<base32 mesh fingerprint>",
     "authority_public": "<base64 32 bytes>",
     "certificate": "<base64 certificate bytes>",
     "name": "<this peer's name, as in the certificate>",
     "seeds": ["tcp://host:port", ...]}

Loading checks that the parts agree (mesh id derived from the authority key, the
certificate names that authority); ``verify`` checks the certificate's signature, time
and that it is this peer's own.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import CertificateError, IdentityError
from mesh.identity.certificate import (
    DEFAULT_SKEW_S,
    Certificate,
    mesh_id_for,
    mesh_id_text,
    verify_certificate,
)
from mesh.identity.files import read_private, write_atomic

MEMBERSHIP_FILE = "mesh.json"
MEMBERSHIP_VERSION = 1
MAX_MEMBERSHIP_BYTES = 64 * 1024
MAX_SEEDS = 16
MAX_SEED_CHARS = 100


@dataclass(frozen=True)
class MeshMembership:
    mesh_id: bytes
    authority_public: bytes
    certificate: bytes
    name: str
    seeds: tuple[str, ...] = ()

    @classmethod
    def from_certificate(cls, cert_bytes: bytes, *, seeds: tuple[str, ...] | list[str] = ()) -> MeshMembership:
        """The membership a certificate implies (its signature is not checked here; see ``verify``)."""
        cert = Certificate.from_bytes(cert_bytes)
        if cert.mesh_id != mesh_id_for(cert.authority_public):
            raise CertificateError("certificate's mesh id does not match its authority key")
        return cls(cert.mesh_id, cert.authority_public, cert.to_bytes(), cert.name, _seeds(list(seeds)))

    @property
    def mesh_id_text(self) -> str:
        return mesh_id_text(self.mesh_id)

    def verify(self, *, peer_public_raw: bytes, now: float, skew_s: float = DEFAULT_SKEW_S) -> Certificate:
        """This peer's certificate, checked against the mesh authority and owned by ``peer_public_raw``."""
        cert = verify_certificate(self.certificate, authority_public_raw=self.authority_public, now=now, skew_s=skew_s)
        if cert.peer_public != peer_public_raw:
            raise CertificateError("the certificate in the mesh file belongs to another key; run `mesh join` again")
        return cert

    def to_json(self) -> str:
        doc = {
            "version": MEMBERSHIP_VERSION,
            "mesh_id": self.mesh_id_text,
            "authority_public": base64.b64encode(self.authority_public).decode("ascii"),
            "certificate": base64.b64encode(self.certificate).decode("ascii"),
            "name": self.name,
            "seeds": list(self.seeds),
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "mesh file") -> MeshMembership:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise IdentityError(f"{source}: not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("version") != MEMBERSHIP_VERSION:
            raise IdentityError(f"{source}: not a version {MEMBERSHIP_VERSION} mesh file")
        authority = _b64(doc, "authority_public", source)
        cert_bytes = _b64(doc, "certificate", source)
        try:
            made = cls.from_certificate(cert_bytes, seeds=_list(doc.get("seeds", []), source))
        except CertificateError as e:
            raise IdentityError(f"{source}: {e}") from None
        if made.authority_public != authority:
            raise IdentityError(f"{source}: the certificate was issued by another mesh's authority")
        if doc.get("mesh_id") != made.mesh_id_text:
            raise IdentityError(f"{source}: mesh_id does not match the authority key")
        if doc.get("name") != made.name:
            raise IdentityError(f"{source}: name does not match the certificate")
        return made

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> MeshMembership:
        try:
            data = read_private(path, max_bytes=MAX_MEMBERSHIP_BYTES, what="mesh file")
        except FileNotFoundError:
            raise IdentityError(f"no mesh file at {path}: run `mesh init` or `mesh join TOKEN`") from None
        return cls.from_json(data, source=str(path))


def _b64(doc: dict, key: str, source: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise IdentityError(f"{source}: {key} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{source}: {key} is not valid base64") from None


def _list(value: Any, source: str) -> list:
    if not isinstance(value, list):
        raise IdentityError(f"{source}: seeds must be a list")
    return value


def _seeds(seeds: list) -> tuple[str, ...]:
    if len(seeds) > MAX_SEEDS:
        raise IdentityError(f"at most {MAX_SEEDS} seeds")
    for s in seeds:
        if not isinstance(s, str) or not 0 < len(s) <= MAX_SEED_CHARS or not s.isprintable():
            raise IdentityError(f"a seed is a printable string of at most {MAX_SEED_CHARS} characters")
    return tuple(seeds)
