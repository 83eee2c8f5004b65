"""Small private files in the data dir: bounded, permission-checked reads.

Writes go through ``mesh.paths.write_atomic`` (re-exported here for the identity code):
0600, a temp file fsynced and renamed over the target, never half a file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mesh.errors import IdentityError
from mesh.paths import write_atomic

__all__ = ["read_private", "write_atomic"]


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
