"""The mesh authority: the key that defines a mesh and signs its members' certificates.

``mesh init`` creates it on the first device (``authority.key`` in the data dir, PEM,
0600, refused when readable by group or others, exactly like a peer's identity key).
The mesh id is derived from its public key (``mesh.identity.certificate.mesh_id_for``),
so a mesh cannot be named without holding its authority key. Devices that join by
token never see this key; they keep only their certificate (``mesh.identity.membership``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from mesh.errors import CertificateError, IdentityError
from mesh.identity.certificate import SERIAL_BYTES, mesh_id_for, mesh_id_text, sign_certificate
from mesh.identity.keys import Identity, load_public_raw

AUTHORITY_KEY_FILE = "authority.key"  # in the data dir of the device that ran `mesh init`
DEFAULT_CERT_TTL_S = 30 * 24 * 3600  # a certificate lasts 30 days unless renewed
MAX_CERT_TTL_S = 10 * 365 * 24 * 3600  # no certificate outlives ten years


class MeshAuthority:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    @classmethod
    def create(cls, path: Path) -> MeshAuthority:
        """Create a new authority key at ``path`` (0600). Refuses to replace an existing one."""
        if path.exists():
            raise IdentityError(f"a mesh authority key already exists at {path}; refusing to replace it")
        identity, created = Identity.load_or_create(path)
        if not created:  # another process created it between the check and the link
            raise IdentityError(f"a mesh authority key already exists at {path}; refusing to replace it")
        return cls(identity)

    @classmethod
    def load(cls, path: Path) -> MeshAuthority:
        if not path.exists():
            raise IdentityError(f"no mesh authority key at {path}: only the device that ran `mesh init` can invite")
        return cls(Identity.load(path))

    @property
    def public_raw(self) -> bytes:
        return self.identity.public_raw

    @property
    def mesh_id(self) -> bytes:
        return mesh_id_for(self.public_raw)

    @property
    def mesh_id_text(self) -> str:
        return mesh_id_text(self.mesh_id)

    def issue(
        self,
        peer_public_raw: bytes,
        name: str,
        *,
        now: float,
        ttl_s: float = DEFAULT_CERT_TTL_S,
        curve_public: bytes = b"",
        predecessor: bytes = b"",
    ) -> bytes:
        """Sign a certificate for ``peer_public_raw`` valid from ``now`` for ``ttl_s`` seconds."""
        if not 0 < ttl_s <= MAX_CERT_TTL_S:
            raise CertificateError(f"a certificate lifetime must be in (0, {MAX_CERT_TTL_S}] seconds, got {ttl_s}")
        load_public_raw(peer_public_raw)  # a malformed key is refused before anything is signed
        issued_at = int(now)
        cert = sign_certificate(
            self.identity,
            peer_public_raw=peer_public_raw,
            name=name,
            issued_at=issued_at,
            expires_at=issued_at + max(1, int(ttl_s)),
            serial=secrets.token_bytes(SERIAL_BYTES),
            curve_public=curve_public,
            predecessor=predecessor,
        )
        return cert.to_bytes()
