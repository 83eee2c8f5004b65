"""Where a peer keeps its files.

The data dir is chosen, in order, by ``--data-dir``, the ``MESH_HOME`` environment
variable, then the per-user data dir (``platformdirs.user_data_dir("mesh")``, e.g.
``~/.local/share/mesh`` on Linux). ``mesh`` and ``mesh-peer`` resolve it the same way so
the CLI finds the peer running beside it.

Every file mesh writes goes through ``write_atomic`` (replace a file whole, never leave
half of one) or ``write_exclusive`` (create a file only if no other process just did):
the one place that knows about temp files, fsync and rename.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mesh.errors import ConfigError


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def identity_key(self) -> Path:  # this peer's Ed25519 private key, 0600
        return self.root / "identity.key"

    @property
    def client_key(self) -> Path:  # the local CLI's Ed25519 private key, 0600
        return self.root / "client.key"

    @property
    def transport_key(self) -> Path:  # this peer's CurveZMQ keypair (its certificate names the public half), 0600
        return self.root / "transport.key"

    @property
    def trust_file(self) -> Path:  # public keys allowed to call this peer
        return self.root / "trusted_keys"

    @property
    def peer_file(self) -> Path:  # written by a running peer: where to reach it
        return self.root / "peer.json"

    @property
    def authority_key(self) -> Path:  # the mesh authority's private key, only where `mesh init` ran
        return self.root / "authority.key"

    @property
    def membership(self) -> Path:  # this peer's mesh: authority public key and its certificate
        return self.root / "mesh.json"

    @property
    def invites(self) -> Path:  # open join tokens (hashed), beside the authority key
        return self.root / "invites.json"

    @property
    def revocations(self) -> Path:  # revocations signed by the mesh authority, kept across restarts
        return self.root / "revocations.json"

    @property
    def rotation_journal(self) -> Path:  # a `mesh rotate` under way: the new keys until they are in use, 0600
        return self.root / "rotation.json"

    @property
    def rotations(self) -> Path:  # beside the authority key: which peer key was rotated to which
        return self.root / "rotations.json"

    @property
    def jobs_db(self) -> Path:  # durable jobs (SQLite, WAL)
        return self.root / "jobs.db"

    @property
    def known_peers(self) -> Path:  # addresses learned by gossip, remembered across restarts
        return self.root / "known_peers.json"

    @property
    def models_dir(self) -> Path:  # the model store (mesh.models.store): blobs, partial pulls, index
        return self.root / "models"

    @property
    def config_file(self) -> Path:  # mesh.toml: mesh-peer's flags, read at start (mesh.cli.configfile)
        return self.root / "mesh.toml"

    @property
    def api_keys(self) -> Path:  # HTTP API keys (hashed only), 0600; see mesh.http.apikeys
        return self.root / "api_keys.json"

    def ensure(self) -> "DataDir":
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(f"cannot create data dir {self.root}: {e.strerror}; pass --data-dir DIR or set MESH_HOME") from e
        if not os.access(self.root, os.W_OK):
            raise ConfigError(f"data dir {self.root} is not writable; pass --data-dir DIR or set MESH_HOME")
        return self


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> DataDir:
    if explicit:
        return DataDir(Path(explicit).expanduser().resolve())
    env = os.environ.get("MESH_HOME")
    if env:
        return DataDir(Path(env).expanduser().resolve())
    return DataDir(Path(platformdirs.user_data_dir("mesh", appauthor=False)))


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """``data`` in a new, uniquely named temp file beside ``path`` (mode ``mode``), fsynced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, make_parents: bool = True) -> None:
    """Replace ``path`` with ``data`` whole: a uniquely named temp file in the same folder
    (mode ``mode``), fsynced, renamed over the target (``os.replace`` is atomic on POSIX).
    A crash leaves the old file or the new one, never half of either; concurrent writers
    each write their own temp file and the last rename wins. With ``make_parents`` False a
    missing folder is an error (a cache beside files that must already be there)."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_exclusive(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` unless it exists (another process may have just
    created it: then it is left alone and False is returned). Written whole, like
    ``write_atomic``: the file appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)  # fails if the target exists: never overwrites
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True
