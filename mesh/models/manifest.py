"""``Manifest``: what a model file is, piece by piece, signed by the peer that publishes it.

A model is named by the SHA-256 of its whole file. For transfer it is cut into pieces
of ``piece_size`` bytes (the last one shorter); the manifest lists every piece's
SHA-256, so a puller checks each piece as it arrives, from any source, and refuses a bad
one before it is written. It also carries what the store knows of the model (its name
and GGUF metadata), the publisher's peer id and Ed25519 public key, and the publisher's
signature over all of that. The whole-file hash is checked again once every piece is
in: a manifest cannot make a wrong file visible.

Wire form (msgpack map): ``v`` 1, ``sha256`` (32 bytes), ``size``, ``piece_size``,
``pieces`` (concatenated 32-byte piece hashes), ``info`` (name, family, parameters,
quantisation, context_length), ``publisher`` (peer id bytes), ``key`` (32-byte Ed25519
public key), ``sig`` (64 bytes, over the canonical msgpack of every other field).

Optional, and signed apart (so peers that predate it still verify the rest): ``chain``
(concatenated 32-byte SHA-256 chaining values at the start of pieces 1..n-1, see
``mesh.models.sha_chain``) and ``chain_sig`` (the publisher's signature over
``CHAIN_DOMAIN``, the SHA-256, the piece size and the chain). With it, checking each
piece also proves the whole file: a pull reads its bytes once.

Pure but for ``build``, which reads the file it describes; ``from_wire`` checks every field and bound and raises ``ManifestError``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh.errors import ManifestError
from mesh.identity.keys import Identity, peer_id_from_public, peer_id_text
from mesh.models import sha_chain

VERSION = 1
MIN_PIECE = 64 * 1024
DEFAULT_PIECE = 4 * 1024 * 1024
MAX_PIECE = 64 * 1024 * 1024
MAX_PIECES = 16_384  # 32 bytes each: a manifest stays under 600 KB, inside one RPC frame
MAX_SIZE = MAX_PIECES * MAX_PIECE  # 1 TiB
MAX_NAME = 128
MAX_TEXT = 64
SHA_HEX = re.compile(r"^[0-9a-f]{64}$")
CHAIN_DOMAIN = b"mesh model sha256 chain v1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def piece_size_for(size: int) -> int:
    """The piece size of a file of ``size`` bytes: 4 MiB, doubled until at most
    ``MAX_PIECES`` pieces cover it."""
    piece = DEFAULT_PIECE
    while math.ceil(size / piece) > MAX_PIECES and piece < MAX_PIECE:
        piece *= 2
    return piece


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(f"a model name is 1..{MAX_NAME} letters, digits, '.', '_' or '-', "
                            f"starting with a letter or digit; got {str(name)[:40]!r}")
    return name


@dataclass(frozen=True)
class ModelCard:
    """What the store knows of a model, from its GGUF header (and the name it was added as)."""

    name: str
    family: str = ""  # general.architecture, e.g. "llama"
    parameters: int = 0
    quantisation: str = ""
    context_length: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "parameters": self.parameters,
                "quantisation": self.quantisation, "context_length": self.context_length}

    @classmethod
    def from_wire(cls, d: Any) -> ModelCard:
        if not isinstance(d, Mapping):
            raise ManifestError("info must be a map")
        name = check_name(d.get("name"))
        texts = {k: d.get(k, "") for k in ("family", "quantisation")}
        ints = {k: d.get(k, 0) for k in ("parameters", "context_length")}
        if not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in texts.values()):
            raise ManifestError(f"info family and quantisation must be text of at most {MAX_TEXT} characters")
        if not all(type(v) is int and 0 <= v < 1 << 53 for v in ints.values()):
            raise ManifestError("info parameters and context_length must be non-negative integers")
        return cls(name=name, **texts, **ints)


@dataclass(frozen=True)
class Manifest:
    sha256: bytes
    size: int
    piece_size: int
    pieces: tuple[bytes, ...]
    info: ModelCard
    publisher: bytes = b""  # peer id
    key: bytes = b""  # the publisher's Ed25519 public key (raw, 32 bytes)
    sig: bytes = field(default=b"", repr=False)
    chain: tuple[bytes, ...] = field(default=(), repr=False)  # chaining value at the start of pieces 1..n-1
    chain_sig: bytes = field(default=b"", repr=False)

    @property
    def proves_whole(self) -> bool:
        """Whether ``check_piece`` of every piece also proves the whole file's SHA-256
        (a chain is there and libcrypto is loadable)."""
        return (bool(self.chain) or len(self.pieces) == 1) and self.piece_size % sha_chain.BLOCK == 0 \
            and sha_chain.available()

    @property
    def sha_hex(self) -> str:
        return self.sha256.hex()

    @property
    def publisher_text(self) -> str:
        return peer_id_text(self.publisher) if self.publisher else ""

    def piece_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of piece ``index``."""
        if not 0 <= index < len(self.pieces):
            raise ManifestError(f"piece {index} is not in a model of {len(self.pieces)} pieces")
        offset = index * self.piece_size
        return offset, min(self.piece_size, self.size - offset)

    def check_piece(self, index: int, data) -> bool:
        """Whether ``data`` is piece ``index``: its length, and its chaining values when
        ``proves_whole`` (one pass that also proves the file), else its SHA-256."""
        offset, length = self.piece_range(index)
        if memoryview(data).nbytes != length:
            return False
        if self.proves_whole:
            last = index == len(self.pieces) - 1
            return sha_chain.check_piece(data, start=self.chain[index - 1] if index else sha_chain.INITIAL,
                                         offset=offset, end=self.sha256 if last else self.chain[index], last=last)
        return hashlib.sha256(data).digest() == self.pieces[index]

    def same_model(self, other: Manifest) -> bool:
        """Another publisher's manifest describes the same bytes, cut the same way (and,
        when both carry one, with the same chain)."""
        return (self.sha256, self.size, self.piece_size, self.pieces) == (
            other.sha256, other.size, other.piece_size, other.pieces) and \
            (not self.chain or not other.chain or self.chain == other.chain)

    def without_signature(self) -> Manifest:
        return Manifest(self.sha256, self.size, self.piece_size, self.pieces, self.info, chain=self.chain)

    # -- signing

    def _body(self) -> dict[str, Any]:
        return {"v": VERSION, "sha256": self.sha256, "size": self.size, "piece_size": self.piece_size,
                "pieces": b"".join(self.pieces), "info": self.info.to_wire(), "publisher": self.publisher,
                "key": self.key}

    def _chain_body(self) -> bytes:
        return msgpack.packb([CHAIN_DOMAIN, self.sha256, self.piece_size, b"".join(self.chain)])

    def signed_by(self, identity: Identity) -> Manifest:
        unsigned = Manifest(self.sha256, self.size, self.piece_size, self.pieces, self.info,
                            publisher=identity.peer_id, key=identity.public_raw)
        sig = identity.sign(msgpack.packb(unsigned._body()))
        return Manifest(self.sha256, self.size, self.piece_size, self.pieces, self.info,
                        publisher=identity.peer_id, key=identity.public_raw, sig=sig, chain=self.chain,
                        chain_sig=identity.sign(self._chain_body()) if self.chain else b"")

    def to_wire(self) -> dict[str, Any]:
        chain = {"chain": b"".join(self.chain), "chain_sig": self.chain_sig} if self.chain else {}
        return {**self._body(), "sig": self.sig, **chain}

    def to_store(self) -> bytes:
        """The unsigned manifest as the store keeps it (the body and the chain)."""
        return msgpack.packb({**self.without_signature()._body(), "chain": b"".join(self.chain)})

    @classmethod
    def from_store(cls, blob: bytes) -> Manifest:
        d = msgpack.unpackb(blob)
        pieces, chain = d["pieces"], d.get("chain", b"")
        return cls(d["sha256"], d["size"], d["piece_size"], _split(pieces), ModelCard.from_wire(d["info"]),
                   chain=_split(chain))

    @classmethod
    def from_wire(cls, d: Any, *, publisher: bytes | None = None) -> Manifest:
        """Check every field, then the signature; with ``publisher``, the manifest must be
        signed by that peer (the one it came from). ``ManifestError`` otherwise."""
        if not isinstance(d, Mapping):
            raise ManifestError("a manifest must be a map")
        if d.get("v") != VERSION:
            raise ManifestError(f"manifest version {d.get('v')!r} is not {VERSION}")
        sha, size, piece_size, pieces = d.get("sha256"), d.get("size"), d.get("piece_size"), d.get("pieces")
        who, key, sig = d.get("publisher"), d.get("key"), d.get("sig")
        if not (isinstance(sha, bytes) and len(sha) == 32):
            raise ManifestError("sha256 must be 32 bytes")
        if not (type(size) is int and 0 < size <= MAX_SIZE):
            raise ManifestError(f"size must be 1..{MAX_SIZE} bytes")
        if not (type(piece_size) is int and MIN_PIECE <= piece_size <= MAX_PIECE):
            raise ManifestError(f"piece_size must be {MIN_PIECE}..{MAX_PIECE}")
        count = math.ceil(size / piece_size)
        if count > MAX_PIECES or not (isinstance(pieces, bytes) and len(pieces) == 32 * count):
            raise ManifestError(f"a model of {size} bytes in pieces of {piece_size} has {count} piece hashes "
                                f"(at most {MAX_PIECES})")
        if not (isinstance(who, bytes) and isinstance(key, bytes) and len(key) == 32 and isinstance(sig, bytes)
                and len(sig) == 64):
            raise ManifestError("a manifest must carry its publisher, a 32-byte key and a 64-byte signature")
        if peer_id_from_public(key) != who:
            raise ManifestError("the manifest's key is not its publisher's")
        if publisher is not None and who != publisher:
            raise ManifestError(f"the manifest was published by {peer_id_text(who)}, not by the peer that sent it")
        chain, chain_sig = d.get("chain", b""), d.get("chain_sig", b"")
        if chain and not (isinstance(chain, bytes) and len(chain) == 32 * (count - 1) and piece_size % 64 == 0
                          and isinstance(chain_sig, bytes) and len(chain_sig) == 64):
            raise ManifestError(f"a chain is 32 bytes for each piece but the first ({count - 1}), over pieces "
                                "of a multiple of 64 bytes, with a 64-byte signature")
        m = cls(sha, size, piece_size, _split(pieces), ModelCard.from_wire(d.get("info")), publisher=who, key=key,
                sig=sig, chain=_split(chain) if chain else (), chain_sig=chain_sig if chain else b"")
        try:
            public = Ed25519PublicKey.from_public_bytes(key)
            public.verify(sig, msgpack.packb(m._body()))
            if m.chain:
                public.verify(chain_sig, m._chain_body())
        except (InvalidSignature, ValueError):
            raise ManifestError(f"the manifest's signature does not verify (publisher {peer_id_text(who)})") from None
        return m


def _split(joined: bytes) -> tuple[bytes, ...]:
    return tuple(joined[i:i + 32] for i in range(0, len(joined), 32))


def build(path: Path, info: ModelCard, *, piece_size: int | None = None, copy_to: BinaryIO | None = None) -> Manifest:
    """The unsigned manifest of a file, in one read of it: the whole file's SHA-256,
    each piece's, and (libcrypto loadable) the chaining value at each piece boundary; with ``copy_to``, every chunk read is also written there (an import
    copies and hashes at once). ``piece_size`` (tests: small files in many pieces) must
    keep the count within bounds."""
    size = path.stat().st_size
    piece = piece_size or piece_size_for(size)
    if not (MIN_PIECE <= piece <= MAX_PIECE and math.ceil(size / piece) <= MAX_PIECES):
        raise ManifestError(f"a piece size of {piece} does not fit a file of {size} bytes")
    chained = piece % sha_chain.BLOCK == 0 and sha_chain.available()
    whole = sha_chain.State.initial() if chained else hashlib.sha256()
    pieces, chain, read = [], [], 0
    with open(path, "rb") as f:
        while chunk := f.read(piece):
            if chained and read:
                chain.append(whole.chaining())
            whole.update(chunk)
            pieces.append(hashlib.sha256(chunk).digest())
            read += len(chunk)
            if copy_to is not None:
                copy_to.write(chunk)
    if read != size:
        raise ManifestError(f"{path} changed while it was read ({size} bytes, then {read})")
    return Manifest(whole.digest(), size, piece, tuple(pieces), info, chain=tuple(chain))
