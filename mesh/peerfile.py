"""``peer.json``: how the CLI and the Python client on this machine find the running peer.

The one reader and writer of the file. A running ``mesh-peer`` writes it (atomically,
0600) once it serves, again after ``mesh rotate``, and removes it when it stops; the
CLI, ``Client`` and ``mesh doctor`` read it. Fields::

    endpoint       tcp://HOST:PORT the peer's RPC server listens on
    peer_id        the peer's id (text form)
    public_key     its Ed25519 public key, base64
    transport_key  its CurveZMQ public key (mesh.identity.transport text form)
    pid            the process, so a stale file (a crashed peer) is recognised
    advertise      where other devices reach it
    model, mesh_id, name, started, http   for people and tools; not needed to connect

A file whose pid is gone, or that does not parse, is ``PeerUnavailable`` with what to do.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import IdentityError, PeerUnavailable
from mesh.identity.keys import peer_id_from_public
from mesh.identity.transport import key_from_text, key_text
from mesh.paths import DataDir, write_atomic

HOW_TO_START = (
    "start one with `bin/mesh-up` (or `.venv/bin/mesh-peer`), "
    "or run this prompt in-process with `mesh ask --embedded`"
)
MAX_BYTES = 64 * 1024  # far above any real file; a bigger one is not ours


@dataclass(frozen=True)
class PeerAddress:
    """What a local client needs to reach the running peer (and what it said of itself)."""

    endpoint: str
    public_raw: bytes
    peer_id: str
    pid: int | None = None
    advertise: tuple[str, ...] = ()  # where other devices reach the peer
    transport_public: bytes = b""  # the peer's CurveZMQ public key
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # model, mesh_id, name, started, http

    def to_json(self) -> bytes:
        doc = {
            "endpoint": self.endpoint,
            "peer_id": self.peer_id,
            "public_key": base64.b64encode(self.public_raw).decode("ascii"),
            "transport_key": key_text(self.transport_public),
            "pid": self.pid,
            "advertise": list(self.advertise),
            **self.extra,
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> PeerAddress:
        """Parse and check; ``ValueError`` (or ``KeyError``/``TypeError``) for a bad file."""
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        raw = base64.b64decode(doc["public_key"], validate=True)
        peer_id_from_public(raw)
        advertise = doc.get("advertise") or []
        if not isinstance(advertise, list) or not all(isinstance(a, str) for a in advertise):
            raise ValueError("advertise must be a list of addresses")
        pid = doc.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise ValueError("pid must be an integer")
        transport_public = key_from_text(doc["transport_key"]) if "transport_key" in doc else b""
        extra = {k: doc[k] for k in ("model", "mesh_id", "name", "started", "http") if k in doc}
        return cls(str(doc["endpoint"]), raw, str(doc["peer_id"]), pid, tuple(advertise), transport_public, extra)


def write_peer_file(data: DataDir, address: PeerAddress) -> None:
    write_atomic(data.peer_file, address.to_json())


def read_peer_file(data: DataDir) -> PeerAddress:
    """Where the local peer listens. ``PeerUnavailable`` (saying what to do) if none runs."""
    path = data.peer_file
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ValueError(f"more than {MAX_BYTES} bytes")
        addr = PeerAddress.from_json(raw)
    except FileNotFoundError:
        raise PeerUnavailable(f"no mesh peer is running for data dir {data.root}; {HOW_TO_START}") from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, IdentityError) as e:
        raise PeerUnavailable(f"{path} is unreadable ({e}); restart the peer, which rewrites it") from None
    if isinstance(addr.pid, int) and not _pid_alive(addr.pid):
        raise PeerUnavailable(f"the peer that wrote {path} (pid {addr.pid}) is no longer running; {HOW_TO_START}")
    return addr


def remove_peer_file(data: DataDir, *, pid: int, endpoint: str | None) -> None:
    """Remove ``peer.json`` if this process (``pid`` at ``endpoint``) wrote it: a newer
    peer on the same data dir may have replaced it, and its file stays."""
    try:
        with open(data.peer_file, "rb") as f:
            current = PeerAddress.from_json(f.read(MAX_BYTES + 1))
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, IdentityError):
        return
    if current.pid == pid and current.endpoint == endpoint:
        data.peer_file.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
