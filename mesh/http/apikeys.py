"""API keys of a peer's HTTP API (``api_keys.json`` in the data dir).

A key is ``mesh-`` followed by 32 random bytes (``secrets``), shown once when it is
created (``mesh keys create NAME``) and never stored: the file keeps its SHA-256 (a
hash is enough for a high-entropy secret; there is nothing to brute-force), with an id,
a name, the creation time and a revoked flag. Checks compare digests with
``hmac.compare_digest``.

The running peer and the ``mesh keys`` CLI share the file: every write is an atomic
0600 replace under an exclusive ``flock`` on ``api_keys.json.lock`` (held across read,
change and write, as ``mesh.identity.invites`` does), and a reader reloads when the
file's identity (inode, size, mtime) changes, so ``mesh keys revoke`` takes effect on a
running peer at its next request, without a restart.

Bounds: at most ``MAX_KEYS`` keys (``create`` refuses past it), the file is refused
unread past ``MAX_STORE_BYTES``; only local processes write it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mesh.errors import ConfigError, InvalidRequest
from mesh.identity.files import read_private, write_atomic

KEY_PREFIX = "mesh-"
KEY_SECRET_BYTES = 32
STORE_VERSION = 1
MAX_KEYS = 1000
MAX_STORE_BYTES = 1 << 20
MAX_TOKEN_CHARS = 256  # a bearer token longer than this is not ours; refused before hashing
_NAME = re.compile(r"^[\w .@:/+-]{1,64}$")
_HASH_DOMAIN = b"mesh/api-key/v1\0"


def key_digest(token: str) -> str:
    return hashlib.sha256(_HASH_DOMAIN + token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str  # short random hex; what `mesh keys revoke` takes
    name: str  # who or what the key is for
    created: float  # unix time
    revoked: bool
    digest: str  # sha256 hex of the key (see key_digest); never the key itself

    def public(self) -> dict:
        """What `mesh keys list --json` shows: everything but the digest."""
        return {"id": self.id, "name": self.name, "created": self.created, "revoked": self.revoked}


class ApiKeyStore:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._clock = clock
        self._keys: list[ApiKey] = []
        self._seen: tuple | None = None  # (inode, size, mtime_ns) of the file last read; () when absent

    # -- reading ------------------------------------------------------------------------

    def _signature(self) -> tuple:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> list[ApiKey]:
        try:
            raw = read_private(self.path, max_bytes=MAX_STORE_BYTES, what="API key file")
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            if doc.get("version") != STORE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            keys = [
                ApiKey(id=str(k["id"]), name=str(k["name"]), created=float(k["created"]),
                       revoked=bool(k["revoked"]), digest=str(k["digest"]))
                for k in doc["keys"]
            ]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ConfigError(f"API key file {self.path} is malformed ({e}); move it away to start over") from None
        return keys

    def refresh(self) -> None:
        """Reload the file if it changed since it was last read (cheap: one stat)."""
        sig = self._signature()
        if sig != self._seen:
            self._keys = self._read()
            self._seen = sig

    def entries(self) -> list[ApiKey]:
        self.refresh()
        return list(self._keys)

    def active_count(self) -> int:
        return sum(1 for k in self.entries() if not k.revoked)

    def lookup(self, token: str) -> ApiKey | None:
        """The key ``token`` is (revoked or not), or None when it is none of ours."""
        if not token.startswith(KEY_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        self.refresh()
        digest = key_digest(token)
        found = None
        for k in self._keys:  # no early exit: every entry is compared
            if hmac.compare_digest(k.digest, digest):
                found = k
        return found

    def verify(self, token: str) -> bool:
        """True when ``token`` is a key of this store that is not revoked."""
        key = self.lookup(token)
        return key is not None and not key.revoked

    # -- writing (CLI) --------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read()
            yield keys
            body = {"version": STORE_VERSION, "keys": [asdict(k) for k in keys]}
            write_atomic(self.path, (json.dumps(body, indent=1) + "\n").encode())
            self._keys, self._seen = list(keys), self._signature()
        finally:
            os.close(fd)  # releases the lock

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key named ``name``: its record and the key itself (shown once, not kept)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest("a key name is 1..64 letters, digits, spaces or . _ @ : / + -")
        token = KEY_PREFIX + secrets.token_urlsafe(KEY_SECRET_BYTES)
        with self._locked() as keys:
            if len(keys) >= MAX_KEYS:
                raise InvalidRequest(f"{self.path} already holds {MAX_KEYS} keys; revoke and remove old ones")
            taken = {k.id for k in keys}
            key_id = secrets.token_hex(4)
            while key_id in taken:
                key_id = secrets.token_hex(4)
            key = ApiKey(id=key_id, name=name, created=self._clock(), revoked=False, digest=key_digest(token))
            keys.append(key)
        return key, token

    def revoke(self, key_id: str) -> ApiKey:
        """Mark the key with id ``key_id`` (or a unique prefix of it) revoked."""
        with self._locked() as keys:
            hits = [i for i, k in enumerate(keys) if k.id.startswith(key_id)] if key_id else []
            if len(hits) != 1:
                raise InvalidRequest(
                    f"key id {key_id!r} matches {'no key' if not hits else f'{len(hits)} keys'}; see `mesh keys list`"
                )
            keys[hits[0]] = replace(keys[hits[0]], revoked=True)
            return keys[hits[0]]
