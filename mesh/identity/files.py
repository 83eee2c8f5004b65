"""Small private files in the data dir: atomic 0600 writes and bounded, permission-checked reads.

A writer never leaves a half-written file: it writes ``<name>.tmp`` (0600), fsyncs it
and renames it over the target (``os.replace`` is atomic on POSIX). Concurrent writers
must serialise themselves (see ``mesh.identity.invites``), since they share the tmp name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mesh.errors import IdentityError


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a stale tmp file may have had another mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_private(path: Path, *, max_bytes: int, what: str) -> bytes:
    """Read a file that must not be readable by group or others, refusing one over ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise IdentityError(f"cannot read {what} {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        data = f.read(max_bytes + 1)  # never more than the cap, whatever the file claims
    if len(data) > max_bytes:
        raise IdentityError(f"{what} {path} is more than {max_bytes} bytes; move it away")
    return data
