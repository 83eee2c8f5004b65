"""The bulk piece stream's rules: key agreement, frames, grants. Pure: no sockets, the
clock injected (the shell is ``mesh.models.bulk``).

A pull moves hundreds of megabytes. Carried as ``models.piece`` RPC chunks, every
512 KiB pays the envelope (a SHA-256 and an Ed25519 signature on each side), msgpack
and CurveZMQ: a pull reached 0.18x of a plain TCP copy. The bulk stream carries the
same pieces over one TCP connection per worker, encrypted and authenticated with
AES-256-GCM (AES-NI: several GB/s), under keys agreed inside signed RPC:

1. The puller makes an ephemeral X25519 key and calls ``models.bulk``
   ``{sha256, key}`` on the source: a signed call, so the source knows which member
   asks, and the member's key is the one it signed.
2. The source makes its own ephemeral X25519 key, derives the session keys, and keeps
   a **grant**: single use, for that model, that member, ``GRANT_TTL_S`` seconds. Its
   signed answer is ``{port, key, ticket}``.
3. Both derive ``HKDF-SHA256(X25519 shared secret, salt=ticket, info=INFO | model
   SHA-256 | puller id | source id)``: 64 bytes, a key for each direction. Nobody
   without one of the two ephemeral private keys can read or forge a frame, and each
   side's public key came in a message signed by its member (no one in the middle can
   swap it).
4. The puller connects to ``port`` on the source's RPC host and sends the ticket
   (``TICKET_BYTES``, random, not secret). Then frames, both ways:

   ``u32 length of what follows | u8 kind | AES-256-GCM(key of this direction,
   nonce = 4 zero bytes + u64 frame counter, plaintext, associated data = the 5 header
   bytes)``

   ============  ==========  =============================================
   kind          sender      plaintext
   ============  ==========  =============================================
   ``GET`` 1     puller      u32 piece index
   ``PIECE`` 2   source      the piece's bytes
   ``NO`` 3      source      why not (UTF-8), e.g. an index out of range
   ============  ==========  =============================================

   The counter makes a replayed, dropped or reordered frame fail its tag. A frame that
   fails, is longer than its kind allows, or has a kind its receiver does not take
   ends the connection, counted.

Every piece is still checked by the puller against the signed manifest (its chaining
values, which also prove the whole file against its content address; or its SHA-256):
the stream's tag proves who sent the bytes, the manifest proves they are the model.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.errors import ModelError

INFO = b"mesh bulk pieces v1"
TICKET_BYTES = 16
KEY_BYTES = 32
TAG_BYTES = 16
HEADER = struct.Struct(">IB")  # length of the sealed part, kind
GET, PIECE, NO = 1, 2, 3
INDEX = struct.Struct(">I")
MAX_REASON = 1024
GRANT_TTL_S = 10.0  # a ticket not used within this is gone
MAX_GRANTS = 64  # outstanding tickets, all members
MAX_GRANTS_PER_PEER = 8


class BulkStreamError(ModelError):
    """A bulk stream frame or ticket that breaks the rules above; ``reason`` labels the
    rejection counter. Not a wire error code of its own (it never crosses RPC)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SessionKeys:
    to_source: bytes  # puller -> source (GET)
    to_puller: bytes  # source -> puller (PIECE, NO)


def new_key_pair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def derive_keys(private: X25519PrivateKey, their_public: bytes, *, ticket: bytes, sha256: bytes,
                puller: bytes, source: bytes) -> SessionKeys:
    """Both sides' session keys; ``BulkStreamError`` for a public key that is not one."""
    if not isinstance(their_public, bytes) or len(their_public) != KEY_BYTES:
        raise BulkStreamError("bad_key", f"an X25519 public key is {KEY_BYTES} bytes")
    if not isinstance(ticket, bytes) or len(ticket) != TICKET_BYTES:
        raise BulkStreamError("bad_ticket", f"a bulk ticket is {TICKET_BYTES} bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(their_public))
    except ValueError as e:  # the all-zero shared secret of a low-order point
        raise BulkStreamError("bad_key", f"unusable X25519 public key: {e}") from None
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=ticket,
               info=INFO + sha256 + puller + source).derive(shared)
    return SessionKeys(to_source=okm[:KEY_BYTES], to_puller=okm[KEY_BYTES:])


class Sealer:
    """Seals the frames one side sends, numbering them."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0

    def seal(self, kind: int, plaintext) -> tuple[bytes, bytes]:
        """(header, sealed) of one frame; send them in this order."""
        header = HEADER.pack(len(plaintext) + TAG_BYTES, kind)
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        return header, self._aead.encrypt(nonce, plaintext, header)

    def seal_into(self, kind: int, plaintext, out: bytearray) -> tuple[bytes, memoryview]:
        """``seal`` into ``out`` (at least the plaintext's length + ``TAG_BYTES``): no
        allocation per frame for the 4 MiB pieces."""
        n = memoryview(plaintext).nbytes
        header = HEADER.pack(n + TAG_BYTES, kind)
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        sealed = memoryview(out)[:n + TAG_BYTES]
        self._aead.encrypt_into(nonce, plaintext, header, sealed)
        return header, sealed


class Opener:
    """Checks and opens the frames one side receives, in order; ``limits`` maps each
    kind it takes to the longest plaintext that kind may have."""

    def __init__(self, key: bytes, limits: dict[int, int]) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self.limits = limits

    def header(self, header: bytes) -> tuple[int, int]:
        """(kind, sealed length) from a header; refuses a kind or length not allowed
        before anything is read or allocated for it."""
        length, kind = HEADER.unpack(header)
        if kind not in self.limits:
            raise BulkStreamError("bad_kind", f"a bulk frame of kind {kind} is not taken here")
        if not TAG_BYTES <= length <= self.limits[kind] + TAG_BYTES:
            raise BulkStreamError("too_long", f"a bulk frame of kind {kind} with {length} bytes "
                                              f"(at most {self.limits[kind] + TAG_BYTES})")
        return kind, length

    def open(self, header: bytes, sealed, into=None):
        """The plaintext of a frame (bytes, or, with ``into``, its first bytes as a
        memoryview: decrypted in place of a copy)."""
        nonce = self._counter.to_bytes(12, "big")
        try:
            if into is None:
                plaintext = self._aead.decrypt(nonce, sealed, header)
            else:
                n = memoryview(sealed).nbytes - TAG_BYTES
                plaintext = into if isinstance(into, memoryview) and into.nbytes == n else memoryview(into)[:n]
                self._aead.decrypt_into(nonce, sealed, header, plaintext)
        except InvalidTag:
            raise BulkStreamError("bad_tag", "a bulk frame failed its tag (forged, replayed, "
                                             "reordered or under another key)") from None
        self._counter += 1
        return plaintext


def get_frame(index: int) -> bytes:
    return INDEX.pack(index)


def parse_get(plaintext: bytes, pieces: int) -> int:
    if len(plaintext) != INDEX.size:
        raise BulkStreamError("bad_get", "a GET frame is one u32 piece index")
    (index,) = INDEX.unpack(plaintext)
    if index >= pieces:
        raise BulkStreamError("bad_index", f"piece {index} of a model with {pieces} pieces")
    return index


@dataclass(frozen=True)
class Grant:
    ticket: bytes
    peer: bytes  # the member who asked (verified sender of models.bulk)
    sha: str
    keys: SessionKeys
    expires_at: float
    path: str  # the model's file, its size and piece size: what the stream may read
    size: int
    piece_size: int

    @property
    def pieces(self) -> int:
        return -(-self.size // self.piece_size)

    def piece_range(self, index: int) -> tuple[int, int]:
        offset = index * self.piece_size
        return offset, min(self.piece_size, self.size - offset)


class BulkGrants:
    """Outstanding tickets: single use, short-lived, bounded in all and per member."""

    def __init__(self, clock: Callable[[], float], *, ttl_s: float = GRANT_TTL_S,
                 max_grants: int = MAX_GRANTS, per_peer: int = MAX_GRANTS_PER_PEER,
                 token: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_grants = max_grants
        self.per_peer = per_peer
        self._token = token
        self._grants: dict[bytes, Grant] = {}

    def ticket(self) -> bytes:
        return self._token(TICKET_BYTES)

    def add(self, ticket: bytes, peer: bytes, sha: str, keys: SessionKeys, *, path: str, size: int,
            piece_size: int) -> Grant:
        """Keep a grant; ``BulkStreamError("too_many")`` when the member (or everyone)
        already holds as many unused tickets as allowed."""
        self._expire()
        if len(self._grants) >= self.max_grants or \
                sum(g.peer == peer for g in self._grants.values()) >= self.per_peer:
            raise BulkStreamError("too_many", "too many bulk tickets not used yet; try again shortly")
        grant = Grant(ticket, peer, sha, keys, self.clock() + self.ttl_s, path, size, piece_size)
        self._grants[ticket] = grant
        return grant

    def take(self, ticket: bytes) -> Grant | None:
        """The grant of ``ticket``, removed (single use); None if unknown or expired."""
        self._expire()
        return self._grants.pop(ticket, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._grants)

    def _expire(self) -> None:
        now = self.clock()
        for t in [t for t, g in self._grants.items() if g.expires_at <= now]:
            del self._grants[t]
