"""Who may talk to this peer.

A ``KeyResolver`` answers one question for the envelope checks: given a sender's peer
id, which Ed25519 public key must have signed its frame (or ``None``: unknown sender).

Today that answer comes from the peer's own key plus the trust file in its data dir.
The mesh authority (a later issue) slots in as another resolver that learns keys from
certificates the authority signed; the envelope code does not change.

Trust file format (``trusted_keys``), one key a line, ``#`` starts a comment::

    <base64 raw 32-byte Ed25519 public key> <name>
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh.errors import IdentityError
from mesh.identity.keys import load_public_raw, peer_id_from_public

MAX_TRUSTED_KEYS = 10_000  # a trust file is written by the operator; still, bound it


class KeyResolver(Protocol):
    def key_for(self, peer_id: bytes) -> Ed25519PublicKey | None: ...


class StaticKeys:
    """A fixed set of public keys, keyed by the peer ids derived from them."""

    def __init__(self, publics_raw: list[bytes] | tuple[bytes, ...] = ()) -> None:
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        for raw in publics_raw:
            self.add(raw)

    def add(self, public_raw: bytes) -> bytes:
        pid = peer_id_from_public(public_raw)
        self._keys[pid] = load_public_raw(public_raw)
        return pid

    def key_for(self, peer_id: bytes) -> Ed25519PublicKey | None:
        return self._keys.get(peer_id)

    def __len__(self) -> int:
        return len(self._keys)


def parse_trust_file(text: str, *, source: str = "trust file") -> list[tuple[bytes, str]]:
    entries: list[tuple[bytes, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key_b64, _, name = line.partition(" ")
        try:
            raw = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise IdentityError(f"{source}:{lineno}: not a base64 key") from e
        if len(raw) != 32:
            raise IdentityError(f"{source}:{lineno}: an Ed25519 public key is 32 bytes, got {len(raw)}")
        entries.append((raw, name.strip()))
        if len(entries) > MAX_TRUSTED_KEYS:
            raise IdentityError(f"{source}: more than {MAX_TRUSTED_KEYS} keys")
    return entries


class TrustStore:
    """This peer's own key plus the keys in its trust file.

    The file is re-read when its modification time changes, so ``add`` from another
    process (the CLI enrolling its client key) takes effect without a restart.
    """

    def __init__(self, path: Path, *, own_public_raw: bytes | None = None) -> None:
        self.path = path
        self._own = StaticKeys([own_public_raw] if own_public_raw else [])
        self._file = StaticKeys()
        self._mtime_ns: int | None = None
        self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._file, self._mtime_ns = StaticKeys(), None
            return
        if mtime == self._mtime_ns:
            return
        entries = parse_trust_file(self.path.read_text(encoding="utf-8"), source=str(self.path))
        self._file = StaticKeys([raw for raw, _ in entries])
        self._mtime_ns = mtime

    def key_for(self, peer_id: bytes) -> Ed25519PublicKey | None:
        key = self._own.key_for(peer_id) or self._file.key_for(peer_id)
        if key is None:
            self._reload_if_changed()
            key = self._file.key_for(peer_id)
        return key

    def add(self, public_raw: bytes, name: str) -> bool:
        """Append a key to the trust file (0600). Returns False when it was already there."""
        existing = parse_trust_file(self.path.read_text(encoding="utf-8")) if self.path.exists() else []
        if any(raw == public_raw for raw, _ in existing):
            return False
        line = f"{base64.b64encode(public_raw).decode('ascii')} {name}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        self._reload_if_changed()
        return True
