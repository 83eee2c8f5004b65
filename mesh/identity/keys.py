"""Ed25519 identity keys and the peer ids derived from them.

A peer id is the first 16 bytes of SHA-256 over a domain tag and the raw 32-byte public
key; its text form is lowercase base32 without padding (26 characters). Ids are
derived, never chosen, so a peer cannot claim another's id without its key.

Private keys live in PEM (PKCS#8) files created with mode 0600; a key file readable by
group or others is refused rather than silently used.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import IdentityError
from mesh.paths import write_exclusive

PEER_ID_BYTES = 16
_ID_DOMAIN = b"mesh/peer-id\0"


def peer_id_from_public(public_raw: bytes) -> bytes:
    if len(public_raw) != 32:
        raise IdentityError(f"an Ed25519 public key is 32 bytes, got {len(public_raw)}")
    return hashlib.sha256(_ID_DOMAIN + public_raw).digest()[:PEER_ID_BYTES]


def peer_id_text(peer_id: bytes) -> str:
    return base64.b32encode(peer_id).decode("ascii").rstrip("=").lower()


def peer_id_from_text(text: str) -> bytes:
    t = text.strip().upper()
    try:
        raw = base64.b32decode(t + "=" * (-len(t) % 8))
    except (ValueError, base64.binascii.Error) as e:
        raise IdentityError(f"not a peer id: {text!r}") from e
    if len(raw) != PEER_ID_BYTES:
        raise IdentityError(f"not a peer id: {text!r}")
    return raw


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise IdentityError("malformed Ed25519 public key") from e


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A private key plus what is derived from it."""

    private_key: Ed25519PrivateKey

    # derived once (every signed frame names its sender: deriving the public key, its
    # bytes and their hash again for each one was a fifth of the cost of sealing a frame)
    @cached_property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @cached_property
    def public_raw(self) -> bytes:
        return public_raw(self.public_key)

    @cached_property
    def peer_id(self) -> bytes:
        return peer_id_from_public(self.public_raw)

    @cached_property
    def peer_id_text(self) -> str:
        return peer_id_text(self.peer_id)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> "Identity":
        try:
            st = path.stat()
        except FileNotFoundError as e:
            raise IdentityError(f"no key at {path}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        try:
            return cls.from_pem(path.read_bytes())
        except (ValueError, TypeError, OSError) as e:
            raise IdentityError(f"cannot read key {path}: {e}; move it away to create a new identity") from e
        except IdentityError:
            raise IdentityError(f"key {path} is not an Ed25519 key") from None

    @classmethod
    def from_pem(cls, pem: bytes) -> "Identity":
        """The identity in a PKCS#8 PEM private key. ``ValueError`` / ``TypeError`` when it is
        not a key, ``IdentityError`` when it is not an Ed25519 one."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError("not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what ``identity.key`` holds)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def load_or_create(cls, path: Path) -> tuple["Identity", bool]:
        """Load the key at ``path``, creating it (0600) when absent. Returns (identity, created)."""
        if path.exists():
            return cls.load(path), False
        ident = cls.generate()
        pem = ident.to_pem()
        if not write_exclusive(path, pem):  # another process created one just now: use it
            return cls.load(path), False
        return ident, True
