"""Join tokens: what `mesh invite` prints and a joining device is given out of band.

Text form: ``"mesh1-"`` + lowercase unpadded base32 of a msgpack array (ONLY APPEND
ELEMENTS: extra trailing elements are tolerated)::

    0  version           int (SUPPORTED_VERSIONS)
    1  mesh_id           bin16, must equal mesh_id_for(authority_public)
    2  authority_public  bin32: the joiner accepts only certificates this key signed
    3  inviter_public    bin32: the inviting peer's Ed25519 key, to verify its reply
    4  endpoints         array of <= 4 "tcp://host:port" strings (<= 100 chars each)
    5  secret            bin16, random
    6  expires_at        int seconds since the Unix epoch
    7  inviter_curve     bin32: the inviting peer's CurveZMQ public key, which the joiner
                         must name to connect (appended; a token without it was made by
                         a build without encrypted transport and is refused at enrolment)

The token is the joiner's trust anchor (it pins the authority and the inviter) and its
credential (the secret). The secret never travels on the network: the joiner proves it
with ``enrol_proof`` (HMAC-SHA256 keyed by the secret over its own public key, CurveZMQ
key, timestamp and name), and names the invite by ``invite_id_for(secret)``. Someone who
sniffs an enrol request learns a proof that enrols that one key, which they cannot use.

Parsing bounds the text before decoding and raises ``TokenError`` for every problem.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.errors import TokenError
from mesh.identity.certificate import KEY_BYTES, MESH_ID_BYTES, mesh_id_for, mesh_id_text

PREFIX = "mesh1-"
TOKEN_VERSION = 1
SUPPORTED_VERSIONS = range(1, 2)
SECRET_BYTES = 16
INVITE_ID_BYTES = 16
PROOF_BYTES = 32
MAX_ENDPOINTS = 4
MAX_ENDPOINT_CHARS = 100
MAX_TOKEN_CHARS = 1024  # four 100-character endpoints make ~890 characters; refuse more unread
MAX_TOKEN_ELEMENTS = 32  # the seven known elements plus appended ones
INVITE_ID_DOMAIN = b"mesh/invite-id\0"
PROOF_DOMAIN = b"mesh/enrol-proof/v1\0"
_TS = struct.Struct(">q")


def invite_id_for(secret: bytes) -> bytes:
    """Names an invite without revealing its secret (a different domain from the proof)."""
    return hashlib.sha256(INVITE_ID_DOMAIN + secret).digest()[:INVITE_ID_BYTES]


def enrol_proof(secret: bytes, *, joiner_public_raw: bytes, name: str, ts: int, curve_public: bytes = b"") -> bytes:
    """HMAC-SHA256(secret, domain + joiner key + ts + len(curve key) + curve key + name).

    Every variable-length part is length-determined or last, so no two requests share
    an input. The CurveZMQ key is covered so that whoever relays a request cannot swap
    in a transport key of their own.
    """
    msg = (
        PROOF_DOMAIN
        + joiner_public_raw
        + _TS.pack(ts)
        + bytes([len(curve_public)])
        + curve_public
        + name.encode("utf-8")
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


def check_endpoint(value: Any) -> str | None:
    """Why ``value`` is not a ``tcp://host:port`` endpoint, or None when it is."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ENDPOINT_CHARS:
        return f"an endpoint is a string of at most {MAX_ENDPOINT_CHARS} characters"
    if not value.isascii() or not value.isprintable() or " " in value:
        return f"endpoint {value!r} has characters an address cannot have"
    if not value.startswith("tcp://"):
        return f"endpoint {value!r} must start with tcp://"
    host, sep, port = value[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"endpoint {value!r} must be tcp://host:port"
    return None


@dataclass(frozen=True)
class JoinToken:
    version: int
    mesh_id: bytes
    authority_public: bytes
    inviter_public: bytes
    endpoints: tuple[str, ...]
    secret: bytes
    expires_at: int
    inviter_curve: bytes = b""  # empty only in tokens of older builds

    @property
    def invite_id(self) -> bytes:
        return invite_id_for(self.secret)

    @property
    def mesh_id_text(self) -> str:
        return mesh_id_text(self.mesh_id)

    def to_text(self) -> str:
        doc = [
            self.version,
            self.mesh_id,
            self.authority_public,
            self.inviter_public,
            list(self.endpoints),
            self.secret,
            self.expires_at,
            self.inviter_curve,
        ]
        body = base64.b32encode(msgpack.packb(doc, use_bin_type=True)).decode("ascii").rstrip("=").lower()
        text = PREFIX + body
        if len(text) > MAX_TOKEN_CHARS:  # endpoints are checked, so this guards the invariant
            raise TokenError(f"token would be {len(text)} characters > {MAX_TOKEN_CHARS}")
        return text

    @classmethod
    def from_text(cls, text: str) -> JoinToken:
        """Parse a token's structure (not its expiry: see ``parse_token``)."""
        if not isinstance(text, str):
            raise TokenError("malformed token: not text")
        text = text.strip()
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenError(f"malformed token: {len(text)} characters, more than {MAX_TOKEN_CHARS}")
        if not text.lower().startswith(PREFIX):
            raise TokenError(f"malformed token: a join token starts with {PREFIX!r}")
        body = text[len(PREFIX) :].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except (binascii.Error, ValueError):
            raise TokenError("malformed token: not base32 (was it copied whole?)") from None
        try:
            doc = msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                max_str_len=MAX_TOKEN_CHARS,
                max_bin_len=MAX_TOKEN_CHARS,
                max_array_len=MAX_TOKEN_ELEMENTS,
                max_map_len=MAX_TOKEN_ELEMENTS,
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            raise TokenError("malformed token: bad encoding (was it copied whole?)") from None
        return _typed(doc)

    @classmethod
    def new(
        cls,
        *,
        mesh_id: bytes,
        authority_public: bytes,
        inviter_public: bytes,
        endpoints: list[str] | tuple[str, ...],
        secret: bytes,
        expires_at: int,
        inviter_curve: bytes = b"",
    ) -> JoinToken:
        """A checked token (the same checks ``from_text`` applies)."""
        return _typed(
            [TOKEN_VERSION, mesh_id, authority_public, inviter_public, list(endpoints), secret, expires_at, inviter_curve]
        )


def parse_token(text: str, *, now: float) -> JoinToken:
    """Parse a token and refuse an expired one."""
    token = JoinToken.from_text(text)
    if now >= token.expires_at:
        raise TokenError(f"expired token: it expired {now - token.expires_at:.0f}s ago; ask for a new `mesh invite`")
    return token


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(doc: Any) -> JoinToken:
    if not isinstance(doc, list) or len(doc) < 7:
        raise TokenError("malformed token: not a token array")
    version, mesh_id, authority, inviter, endpoints, secret, expires_at = doc[:7]
    if not _int(version):
        raise TokenError("malformed token: bad version field")
    if version not in SUPPORTED_VERSIONS:
        raise TokenError(f"unsupported token version {version}: upgrade mesh on this device")
    for label, value, size in (
        ("mesh id", mesh_id, MESH_ID_BYTES),
        ("authority key", authority, KEY_BYTES),
        ("inviter key", inviter, KEY_BYTES),
        ("secret", secret, SECRET_BYTES),
    ):
        if not isinstance(value, bytes) or len(value) != size:
            raise TokenError(f"malformed token: the {label} must be {size} bytes")
    if mesh_id != mesh_id_for(authority):
        raise TokenError("malformed token: mesh id does not match the authority key")
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise TokenError(f"malformed token: at most {MAX_ENDPOINTS} endpoints")
    for ep in endpoints:
        problem = check_endpoint(ep)
        if problem:
            raise TokenError(f"malformed token: {problem}")
    if not _int(expires_at) or not 0 <= expires_at < (1 << 63):
        raise TokenError("malformed token: bad expiry")
    curve = doc[7] if len(doc) > 7 else b""
    if not isinstance(curve, bytes) or len(curve) not in (0, KEY_BYTES):
        raise TokenError(f"malformed token: the inviter's transport key must be {KEY_BYTES} bytes")
    return JoinToken(version, mesh_id, authority, inviter, tuple(endpoints), secret, expires_at, curve)
