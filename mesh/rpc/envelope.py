"""The wire envelope: encode + sign, and the ordered checks that admit a frame.

Frame layout (all integers big-endian)::

    0   4  magic      b"MESH"
    4   1  version    protocol version of this frame
    5  16  sender     sender peer id (see mesh.identity.keys)
   21  64  signature  version 1: Ed25519 over DOMAIN + frame[0:21] + payload
                      version 2: Ed25519 over DOMAIN_V2 + frame[0:21] + SHA-256(payload)
   85   …  payload    msgpack map, see ``Envelope``

The signature covers the exact bytes sent. Frames of up to ``PREHASH_ABOVE`` bytes of
payload are version 1; bigger ones (model pieces, long answers) are version 2, whose
signature covers the payload's SHA-256: Ed25519 hashes what it signs with SHA-512,
twice when signing, which made signing a 512 KiB chunk cost 3 s per GB here, where
SHA-256 (with the CPU's SHA extensions) costs 0.65. The security is the same (Ed25519
over a collision-resistant digest of the bytes; the model manifests already rest on
SHA-256); the domain tag differs so a signature of one version is never one of the
other. A version-1-only peer refuses version-2 frames as ``bad_version``. Receivers check, in this order, and stop at
the first failure (each failure is a ``RejectReason`` and is counted by the caller):

1. size (before anything is parsed)        -> OVERSIZE / MALFORMED
2. magic and version                       -> MALFORMED / BAD_VERSION
3. the sender's key is known, or learned from the credential sent beside the frame
   (a certificate from this mesh's authority, checked by the injected ``credentials``)
                                           -> UNKNOWN_SENDER / BAD_CREDENTIAL / REVOKED
4. the signature                           -> BAD_SIGNATURE
5. msgpack, with explicit unpacker limits  -> MALFORMED
6. field types, sender/version agreement   -> BAD_FIELD
7. the kind is one we know                 -> UNKNOWN_KIND
8. the timestamp is inside the window      -> STALE_TIMESTAMP
9. the nonce was not seen before           -> REPLAY

Nothing in a frame is parsed before its signature is verified, so an attacker without a
trusted key reaches only a fixed-size header read and one signature check.
This module is pure: the clock reading (``now_ms``) and the replay cache are passed in.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.errors import EnvelopeRejected, MeshError
from mesh.identity.keys import PEER_ID_BYTES, Identity, verify
from mesh.identity.trust import KeyResolver
from mesh.rpc.limits import UNPACK_ERRORS, depth_exceeds, unpack_bounded
from mesh.rpc.replay import NonceCache

MAGIC = b"MESH"
PROTOCOL_VERSION = 2  # the newest version this build sends
SUPPORTED_VERSIONS = range(1, 3)  # versions this build accepts
DOMAIN = b"mesh/v1\0"
DOMAIN_V2 = b"mesh/v2\0"
PREHASH_ABOVE = 16 * 1024  # payloads bigger than this go in version 2 frames
HEADER = struct.Struct(">4sB16s64s")
HEADER_BYTES = HEADER.size  # 85
ID_BYTES = 16
NONCE_BYTES = 16

# Kinds of envelope. ONLY APPEND TO THIS LIST: peers of older versions must keep
# understanding the kinds they know.
KINDS = (
    "call",  # start a call: body {m: method, a: args map, t: timeout ms}
    "chunk",  # one streamed item of a call: {re: call id, seq: int, d: map}
    "result",  # the call's final reply (ends a stream too): {re, d}
    "error",  # the call failed: {re, c: code, msg: text}
    "cancel",  # the caller gives up on a call: {re}
    "cast",  # a one-way message, never answered (gossip datagrams): {m: method, a: args}
)


class RejectReason(enum.Enum):
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    UNKNOWN_SENDER = "unknown_sender"
    BAD_SIGNATURE = "bad_signature"
    BAD_FIELD = "bad_field"
    UNKNOWN_KIND = "unknown_kind"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAY = "replay"
    BAD_CREDENTIAL = "bad_credential"  # appended: a certificate that failed its checks
    REVOKED = "revoked"  # appended: a valid certificate the mesh authority revoked
    BAD_TRANSPORT_KEY = "bad_transport_key"  # appended: came over a CurveZMQ key the sender's certificate does not name


@dataclass(frozen=True)
class Envelope:
    version: int
    kind: str
    msg_id: bytes  # 16 random bytes; replies name it in body["re"]
    sender: bytes  # peer id, 16 bytes
    ts_ms: int  # sender's clock, ms since the Unix epoch
    nonce: bytes  # 16 random bytes; (sender, nonce) is accepted once
    body: dict[str, Any]


def new_id() -> bytes:
    return secrets.token_bytes(ID_BYTES)


def encode(identity: Identity, kind: str, body: dict[str, Any], *, now_ms: int, msg_id: bytes | None = None) -> bytes:
    """Build and sign one frame. ``body`` must hold only msgpack-native types."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    doc = {
        "v": 1,
        "k": kind,
        "id": msg_id or new_id(),
        "from": identity.peer_id,
        "ts": int(now_ms),
        "n": secrets.token_bytes(NONCE_BYTES),
        "b": body,
    }
    payload = msgpack.packb(doc, use_bin_type=True)
    version = 1
    if len(payload) > PREHASH_ABOVE:
        version = doc["v"] = 2
        payload = msgpack.packb(doc, use_bin_type=True)
    head = MAGIC + bytes([version]) + identity.peer_id
    return head + identity.sign(signed_bytes(version, head, payload)) + payload


def signed_bytes(version: int, head: bytes, payload: bytes) -> bytes:
    """What a frame's signature covers (see the module doc)."""
    if version == 1:
        return DOMAIN + head + payload
    return DOMAIN_V2 + head + hashlib.sha256(payload).digest()


def decode(
    frame: bytes,
    *,
    resolver: KeyResolver,
    replay: NonceCache,
    now_ms: int,
    max_frame_bytes: int,
    window_ms: int,
    max_body_depth: int = 16,
    credential: bytes | None = None,
    credentials: Callable[[bytes, float], bytes] | None = None,
    max_credential_bytes: int = 2048,
) -> Envelope:
    """Admit one frame or raise ``EnvelopeRejected``. See the module doc for the order.

    ``credentials(credential, now_s)`` verifies a certificate and returns the peer id it
    certifies (raising ``MeshError`` if it is not valid); after it succeeds, ``resolver``
    knows that peer's key.
    """
    if len(frame) > max_frame_bytes:
        raise EnvelopeRejected(RejectReason.OVERSIZE, f"{len(frame)} bytes > {max_frame_bytes}")
    if len(frame) < HEADER_BYTES + 1:
        raise EnvelopeRejected(RejectReason.MALFORMED, "frame shorter than the header")
    magic, version, sender, signature = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise EnvelopeRejected(RejectReason.MALFORMED, "bad magic")
    if version not in SUPPORTED_VERSIONS:
        raise EnvelopeRejected(
            RejectReason.BAD_VERSION,
            f"version {version}; this peer speaks {SUPPORTED_VERSIONS.start}..{SUPPORTED_VERSIONS.stop - 1}",
        )
    key = resolver.key_for(sender)
    # A credential is checked when the sender's key is unknown, or known only
    # provisionally (a self-asserted key during enrolment, now presenting a certificate).
    provisional = getattr(resolver, "is_provisional", None)
    if (
        credential is not None
        and credentials is not None
        and (key is None or (provisional is not None and provisional(sender)))
    ):
        if len(credential) > max_credential_bytes:
            raise EnvelopeRejected(RejectReason.BAD_CREDENTIAL, f"credential over {max_credential_bytes} bytes")
        try:
            certified = credentials(credential, now_ms / 1000)
        except MeshError as e:
            revoked = getattr(getattr(e, "reason", None), "value", None) == RejectReason.REVOKED.value
            raise EnvelopeRejected(RejectReason.REVOKED if revoked else RejectReason.BAD_CREDENTIAL, str(e)) from None
        if certified != sender:
            raise EnvelopeRejected(RejectReason.BAD_CREDENTIAL, "credential certifies another peer")
        key = resolver.key_for(sender)
    if key is None:
        raise EnvelopeRejected(RejectReason.UNKNOWN_SENDER, "sender is not trusted by this peer")
    payload = frame[HEADER_BYTES:]
    if not verify(key, signature, signed_bytes(version, frame[:21], payload)):
        raise EnvelopeRejected(RejectReason.BAD_SIGNATURE)

    try:
        doc = unpack_bounded(payload)  # payload is already within max_frame_bytes
    except UNPACK_ERRORS as e:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"bad msgpack: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise EnvelopeRejected(RejectReason.BAD_FIELD, "payload is not a map")
    env = _typed(doc)
    if env.version != version or env.sender != sender:
        raise EnvelopeRejected(RejectReason.BAD_FIELD, "payload disagrees with the header")
    if depth_exceeds(env.body, max_body_depth):
        raise EnvelopeRejected(RejectReason.BAD_FIELD, f"body nested deeper than {max_body_depth}")
    if env.kind not in KINDS:
        raise EnvelopeRejected(RejectReason.UNKNOWN_KIND, f"kind {env.kind!r}")
    if abs(env.ts_ms - now_ms) > window_ms:
        raise EnvelopeRejected(
            RejectReason.STALE_TIMESTAMP, f"timestamp {(env.ts_ms - now_ms) / 1000:+.1f}s from this peer's clock"
        )
    if not replay.check_and_record(sender, env.nonce, ts_ms=env.ts_ms, now_ms=now_ms):
        raise EnvelopeRejected(RejectReason.REPLAY)
    return env


_FIELDS = (("v", int), ("k", str), ("id", bytes), ("from", bytes), ("ts", int), ("n", bytes), ("b", dict))


def _typed(doc: dict) -> Envelope:
    for name, typ in _FIELDS:
        value = doc.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise EnvelopeRejected(RejectReason.BAD_FIELD, f"field {name!r} must be {typ.__name__}")
    if len(doc["id"]) != ID_BYTES or len(doc["n"]) != NONCE_BYTES or len(doc["from"]) != PEER_ID_BYTES:
        raise EnvelopeRejected(RejectReason.BAD_FIELD, "id, nonce and sender are 16 bytes")
    return Envelope(doc["v"], doc["k"], doc["id"], doc["from"], doc["ts"], doc["n"], doc["b"])
