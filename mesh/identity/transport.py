"""CurveZMQ transport keys: what encrypts every connection between peers.

A peer has a Curve25519 keypair of its own (``transport.key`` in the data dir, 0600,
made on first start) whose public half its certificate carries (field ``c``), so a
member's transport key is as trusted as its certificate. A caller that connects to a
peer must name that key (ZeroMQ's CURVE client needs the server's public key before
the handshake), and the peer binds every frame it admits to the key the connection
presented (see ``mesh.rpc.server``).

Keys that never get a certificate (the local CLI's ``client.key`` and the other keys of
the trust file) use the X25519 key *derived* from their Ed25519 key, the conversion
libsodium does in ``crypto_sign_ed25519_pk_to_curve25519`` / ``..._sk_to_curve25519``:
the caller holds the Ed25519 private key and derives the secret, the peer holds only the
trusted public key and derives the public. So a trusted key needs no second file and no
second entry in ``trusted_keys``, and is still bound to one transport key.

Text form (``--join HOST:PORT@KEY``, mDNS TXT ``c``, ``peer.json``): lowercase base32
without padding, 52 characters, like peer ids; ZeroMQ's z85 is avoided in text because
its alphabet holds ``@``, ``:`` and ``/``. The key file holds z85, the format of
ZeroMQ's own certificate files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from cryptography.hazmat.primitives import serialization
from zmq.utils import z85

from mesh.errors import IdentityError
from mesh.identity.files import read_private, write_atomic
from mesh.identity.keys import Identity

KEY_BYTES = 32
KEY_TEXT_CHARS = 52  # base32 of 32 bytes, unpadded
_KEY_TEXT = re.compile(r"[a-z2-7]{52}")
_MAX_FILE_BYTES = 512
_P = 2**255 - 19  # the field of Curve25519 / Ed25519


def key_text(raw: bytes) -> str:
    if len(raw) != KEY_BYTES:
        raise IdentityError(f"a transport key is {KEY_BYTES} bytes, got {len(raw)}")
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def key_from_text(text: str) -> bytes:
    """Parse the text form; ``IdentityError`` saying what is wrong otherwise."""
    t = text.strip().lower() if isinstance(text, str) else ""
    if not _KEY_TEXT.fullmatch(t):
        raise IdentityError(f"not a transport key (52 characters of a-z, 2-7): {text!r}")
    try:
        return base64.b32decode(t.upper() + "====")
    except (binascii.Error, ValueError):
        raise IdentityError(f"not a transport key: {text!r}") from None


def is_key_text(text: str) -> bool:
    return isinstance(text, str) and bool(_KEY_TEXT.fullmatch(text))


@dataclass(frozen=True)
class TransportKeys:
    """A Curve25519 keypair (raw 32-byte halves)."""

    public: bytes
    secret: bytes = field(repr=False)

    @property
    def public_text(self) -> str:
        return key_text(self.public)

    @classmethod
    def generate(cls) -> TransportKeys:
        public_z85, secret_z85 = zmq.curve_keypair()
        return cls(z85.decode(public_z85), z85.decode(secret_z85))

    @classmethod
    def from_secret(cls, secret: bytes) -> TransportKeys:
        if len(secret) != KEY_BYTES:
            raise IdentityError(f"a transport secret key is {KEY_BYTES} bytes")
        public = z85.decode(zmq.curve_public(z85.encode(secret)))
        return cls(public, bytes(secret))

    @classmethod
    def derived_from(cls, identity: Identity) -> TransportKeys:
        """The X25519 keypair of an Ed25519 identity (libsodium's sk_to_curve25519)."""
        seed = identity.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        h = bytearray(hashlib.sha512(seed).digest()[:32])
        h[0] &= 248
        h[31] &= 127
        h[31] |= 64
        return cls.from_secret(bytes(h))

    def save(self, path: Path) -> None:
        text = f"public {z85.encode(self.public).decode()}\nsecret {z85.encode(self.secret).decode()}\n"
        write_atomic(path, text.encode("ascii"))

    @classmethod
    def load(cls, path: Path) -> TransportKeys:
        data = read_private(path, max_bytes=_MAX_FILE_BYTES, what="transport key")
        fields = dict(line.split(" ", 1) for line in data.decode("ascii", "replace").splitlines() if " " in line)
        try:
            keys = cls.from_secret(z85.decode(fields["secret"].strip()))
        except (KeyError, ValueError, IdentityError):
            raise IdentityError(f"transport key {path} is malformed; move it away to make a new one") from None
        if "public" in fields and z85.decode(fields["public"].strip()) != keys.public:
            raise IdentityError(f"transport key {path}: the public key does not match the secret")
        return keys

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[TransportKeys, bool]:
        """Load the keypair at ``path``, creating it (0600) when absent. Returns (keys, created)."""
        if path.exists():
            return cls.load(path), False
        keys = cls.generate()
        keys.save(path)
        return keys, True


def derived_public(ed25519_public_raw: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key (libsodium's pk_to_curve25519):
    the Montgomery u = (1 + y) / (1 - y) of the Edwards point's y."""
    if len(ed25519_public_raw) != KEY_BYTES:
        raise IdentityError(f"an Ed25519 public key is {KEY_BYTES} bytes")
    y = int.from_bytes(ed25519_public_raw, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return u.to_bytes(KEY_BYTES, "little")
