"""``ModelStore``: a peer's model files, content-addressed by SHA-256, within a disk budget.

Layout under ``<data dir>/models/``::

    blobs/<sha256>.gguf        complete, verified models (read-only to everyone else)
    partial/<sha256>.part      a pull in progress (pieces written at their offsets)
    tmp/                       imports being copied (renamed into blobs/ when whole)
    index.sqlite3              what is where: models, pieces of partial pulls

- ``add(path, name=)`` imports a GGUF file: checked (``check_model_file``), copied while
  hashed (the whole file and each piece, in one read), renamed into ``blobs/`` only when complete; its name (from the file name, or
  given) and metadata (family, parameters, quantisation, context, from the GGUF header)
  go in the index with its manifest (piece hashes), signed later by whoever publishes.
- A model is found by name, by full SHA-256, or by a unique SHA-256 prefix of at least
  12 hex digits (``resolve``); ``ModelNotFound`` says what exists.
- Disk budget (``max_bytes``; ``None``: only the disk's own free space): making room for a
  new model evicts the least recently used unpinned models; if that cannot make room,
  ``ModelStoreFull`` says how much is missing, and nothing is evicted or written.
- Partial pulls: ``begin_partial`` records the manifest; ``write_piece`` writes a verified
  piece at its offset and marks it done (durable: a restarted puller resumes with the
  pieces not done); ``finish_partial`` checks the whole file's hash and renames it into
  ``blobs/``, or throws the bad file away. A crash leaves either a partial (resumable)
  or a complete model, never a half-written model that looks whole.

One thread at a time (the peer's event loop, or ``asyncio.to_thread`` for big file work).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ManifestError, ModelError, ModelNotFound, ModelStoreFull
from mesh.inference.models import model_info, read_gguf_metadata
from mesh.models.manifest import Manifest, ModelCard, build, check_name

log = logging.getLogger("mesh.models")

MIN_PREFIX = 12
COPY_CHUNK = 4 * 1024 * 1024
DIRECT_BLOCK = 4096  # O_DIRECT writes: whole blocks of this, from a page-aligned buffer
DISK_RESERVE = 256 * 1024 * 1024  # never fill the disk to the last byte

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    sha TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, family TEXT NOT NULL,
    parameters INTEGER NOT NULL, quantisation TEXT NOT NULL, context_length INTEGER NOT NULL,
    added_at REAL NOT NULL, last_used REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0,
    manifest BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS models_name ON models(name);
CREATE TABLE IF NOT EXISTS partial (sha TEXT PRIMARY KEY, manifest BLOB NOT NULL, started_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS partial_pieces (sha TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (sha, idx));
"""


@dataclass(frozen=True)
class StoredModel:
    sha: str
    card: ModelCard
    size: int
    added_at: float
    last_used: float
    pinned: bool

    @property
    def name(self) -> str:
        return self.card.name

    def to_wire(self) -> dict:
        return {"sha256": self.sha, **self.card.to_wire(), "size": self.size, "pinned": self.pinned,
                "last_used": self.last_used}


class ModelStore:
    def __init__(self, root: Path, *, max_bytes: int | None = None, clock: Callable[[], float] = time.time,
                 free_bytes: Callable[[Path], int] | None = None, piece_size: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes cannot be negative")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.piece_size = piece_size  # None: manifest.piece_size_for (4 MiB and up)
        self._direct = hasattr(os, "O_DIRECT")  # until the file system says no
        self.direct_bytes = 0  # written with O_DIRECT (the rest went through the page cache)
        self._clock = clock
        self._free = free_bytes or (lambda p: shutil.disk_usage(p).free)
        for sub in ("blobs", "partial", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "index.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self.evictions = 0
        for stale in (self.root / "tmp").iterdir():  # imports a crash cut short
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        self._db.close()

    # -- reading

    def path(self, sha: str) -> Path:
        return self.root / "blobs" / f"{sha}.gguf"

    def list(self) -> list[StoredModel]:
        rows = self._db.execute("SELECT sha, name, size, family, parameters, quantisation, context_length, "
                                "added_at, last_used, pinned FROM models ORDER BY name, sha").fetchall()
        return [_stored(r) for r in rows]

    def used_bytes(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM models").fetchone()[0] + sum(
            Manifest.from_store(m).size for (m,) in self._db.execute("SELECT manifest FROM partial"))

    def resolve(self, ref: str) -> StoredModel:
        """A model by name, SHA-256, or unique SHA-256 prefix (12+ hex digits)."""
        ref = (ref or "").strip()
        found = [m for m in self.list() if m.name == ref or m.sha == ref.lower()
                 or (len(ref) >= MIN_PREFIX and m.sha.startswith(ref.lower()))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ModelNotFound(f"{ref!r} names {len(found)} models here ({', '.join(m.sha[:12] for m in found)}); "
                                "use the SHA-256")
        have = ", ".join(sorted({m.name for m in self.list()})) or "none"
        raise ModelNotFound(f"no model {ref!r} in this store (it has: {have}); `mesh models list` shows the mesh's")

    def has(self, sha: str) -> bool:
        return self._db.execute("SELECT 1 FROM models WHERE sha = ?", (sha,)).fetchone() is not None

    def manifest(self, sha: str) -> Manifest:
        row = self._db.execute("SELECT manifest FROM models WHERE sha = ?", (sha,)).fetchone()
        if row is None:
            raise ModelNotFound(f"no model {sha} in this store")
        return Manifest.from_store(row[0])

    def read_piece(self, sha: str, index: int) -> bytes:
        return _read_range(self.path(sha), *self.manifest(sha).piece_range(index))

    def add_missing_chains(self) -> int:
        """Give the models added before manifests carried SHA-256 chaining values their
        chain (one read of each file), so pulls from this peer read each byte once.
        Returns how many were done; nothing when libcrypto is not loadable."""
        done = 0
        for model in self.list():
            m = self.manifest(model.sha)
            if m.chain or len(m.pieces) == 1 or m.piece_size % 64:
                continue
            try:
                rebuilt = build(self.path(model.sha), m.info, piece_size=m.piece_size)
            except (OSError, ManifestError) as e:
                log.warning("no chain for %s: %s", model.name, e)
                continue
            if not rebuilt.chain or not rebuilt.same_model(m):
                continue
            self._db.execute("UPDATE models SET manifest = ? WHERE sha = ?", (rebuilt.to_store(), model.sha))
            done += 1
        return done

    # -- changing

    def add(self, source: Path, *, name: str | None = None, pinned: bool = False) -> StoredModel:
        """Import a GGUF file (copied; the original stays). Idempotent by content."""
        source = Path(source)
        metadata = read_gguf_metadata(source)  # ModelError for anything llama.cpp would refuse
        info = model_info(metadata, source)
        card = ModelCard(name=check_name(name or info.name), family=info.architecture,
                         parameters=info.parameters, quantisation=info.quantisation,
                         context_length=info.context_length)
        tmp = self.root / "tmp" / f"import-{os.getpid()}-{time.monotonic_ns()}"
        try:
            with open(tmp, "wb") as dst:  # copied and hashed (whole and per piece) in one read
                manifest = build(source, card, piece_size=self.piece_size, copy_to=dst)
                dst.flush()
                os.fsync(dst.fileno())
            sha = manifest.sha_hex
            if self.has(sha):
                return self.resolve(sha)
            self._make_room(manifest.size, keep=sha)
            os.replace(tmp, self.path(sha))
        except OSError as e:
            raise ModelError(f"cannot import {source}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._insert(manifest, pinned=pinned)
        return self.resolve(sha)

    def remove(self, ref: str) -> StoredModel:
        m = self.resolve(ref)
        self._db.execute("DELETE FROM models WHERE sha = ?", (m.sha,))
        self.path(m.sha).unlink(missing_ok=True)
        return m

    def pin(self, ref: str, pinned: bool = True) -> StoredModel:
        m = self.resolve(ref)
        self._db.execute("UPDATE models SET pinned = ? WHERE sha = ?", (int(pinned), m.sha))
        return self.resolve(m.sha)

    def touch(self, sha: str) -> None:
        """The model was used now (least recently used models are evicted first)."""
        self._db.execute("UPDATE models SET last_used = ? WHERE sha = ?", (self._clock(), sha))

    def _insert(self, manifest: Manifest, *, pinned: bool) -> None:
        now = self._clock()
        c = manifest.info
        self._db.execute(
            "INSERT OR REPLACE INTO models (sha, name, size, family, parameters, quantisation, context_length, "
            "added_at, last_used, pinned, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (manifest.sha_hex, c.name, manifest.size, c.family, c.parameters, c.quantisation, c.context_length,
             now, now, int(pinned), manifest.to_store()))

    def _make_room(self, size: int, *, keep: str) -> None:
        """Evict least recently used unpinned models until ``size`` more bytes fit the budget
        and the disk; ``ModelStoreFull`` (evicting nothing) when they cannot."""
        used = self.used_bytes()
        free = self._free(self.root) - DISK_RESERVE
        candidates = [m for m in sorted(self.list(), key=lambda m: m.last_used) if not m.pinned and m.sha != keep]
        victims, freed = [], 0
        for m in candidates:
            fits_budget = self.max_bytes is None or used - freed + size <= self.max_bytes
            if fits_budget and free + freed >= size:
                break
            victims.append(m)
            freed += m.size
        fits_budget = self.max_bytes is None or used - freed + size <= self.max_bytes
        if not fits_budget or free + freed < size:
            budget = f"the budget of {_gb(self.max_bytes)}" if self.max_bytes is not None else "the disk"
            raise ModelStoreFull(
                f"a model of {_gb(size)} does not fit {budget}: {_gb(used)} used, {_gb(max(free, 0))} free on disk, "
                f"even after evicting every unpinned model; remove or unpin models (`mesh models rm/pin`) or "
                "raise --models-max-gb")
        for m in victims:
            self.remove(m.sha)
            self.evictions += 1

    # -- partial pulls

    def begin_partial(self, manifest: Manifest) -> set[int]:
        """Start (or resume) a pull of ``manifest``'s model; returns the pieces already done."""
        sha = manifest.sha_hex
        if self.has(sha):
            raise ModelError(f"model {sha[:12]} is already in this store")
        row = self._db.execute("SELECT manifest FROM partial WHERE sha = ?", (sha,)).fetchone()
        if row is not None:
            if not Manifest.from_store(row[0]).same_model(manifest):
                raise ManifestError(f"a pull of {sha[:12]} is in progress with a different manifest; "
                                    "`mesh models rm` it to start again")
            return {i for (i,) in self._db.execute("SELECT idx FROM partial_pieces WHERE sha = ?", (sha,))}
        self._make_room(manifest.size, keep=sha)
        part = self._part(sha)
        with open(part, "wb") as f:
            f.truncate(manifest.size)
        self._db.execute("INSERT INTO partial (sha, manifest, started_at) VALUES (?, ?, ?)",
                         (sha, manifest.to_store(), self._clock()))
        return set()

    def partial_manifest(self, sha: str) -> Manifest | None:
        row = self._db.execute("SELECT manifest FROM partial WHERE sha = ?", (sha,)).fetchone()
        return Manifest.from_store(row[0]) if row else None

    def partials(self) -> list[str]:
        return [s for (s,) in self._db.execute("SELECT sha FROM partial ORDER BY started_at")]

    def write_piece(self, manifest: Manifest, index: int, data, *, commit: bool = True, direct: bool = False) -> None:
        """Write a piece the caller has checked (``Manifest.check_piece``). With ``commit``
        it is made durable and marked done at once; without, it waits for
        ``commit_pieces`` (one fsync and one transaction for many pieces: a crash before
        that only loses the uncommitted pieces, fetched again on resume).

        ``direct``: ``data`` starts on a page boundary (an ``mmap`` buffer): its whole
        blocks go to the disk with ``O_DIRECT``, not through the page cache (copying
        gigabytes into the cache cost a pull more CPU than hashing them); the tail, and
        everything on a file system without ``O_DIRECT``, is written as usual."""
        offset, length = manifest.piece_range(index)
        if memoryview(data).nbytes != length:
            raise ManifestError(f"piece {index} is {memoryview(data).nbytes} bytes, not {length}")
        head = self._write_direct(manifest.sha_hex, data, offset) if direct else 0
        if head < length:
            fd = os.open(self._part(manifest.sha_hex), os.O_WRONLY)
            try:
                os.pwrite(fd, memoryview(data)[head:], offset + head)
            finally:
                os.close(fd)
        if commit:
            self.commit_pieces(manifest, [index])

    def _write_direct(self, sha: str, data, offset: int) -> int:
        """Bytes of ``data`` written with ``O_DIRECT`` (whole ``DIRECT_BLOCK``s from its
        start); 0 when the file system will not (remembered)."""
        head = memoryview(data).nbytes // DIRECT_BLOCK * DIRECT_BLOCK
        if not self._direct or head == 0 or offset % DIRECT_BLOCK:
            return 0
        try:
            fd = os.open(self._part(sha), os.O_WRONLY | os.O_DIRECT)
        except OSError:  # tmpfs and others: no O_DIRECT
            self._direct = False
            return 0
        try:
            written = os.pwrite(fd, memoryview(data)[:head], offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct = False  # alignment this file system wants more of: the page cache then
            return 0
        finally:
            os.close(fd)
        self.direct_bytes += written
        return written

    def commit_pieces(self, manifest: Manifest, indices) -> None:
        """Make written pieces durable (fsync), then mark them done (one transaction)."""
        indices = list(indices)
        if not indices:
            return
        fd = os.open(self._part(manifest.sha_hex), os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO partial_pieces (sha, idx) VALUES (?, ?)",
                                 [(manifest.sha_hex, i) for i in indices])

    def read_partial_piece(self, manifest: Manifest, index: int) -> bytes:
        """A piece of a pull in progress, as written (to hash or check it again)."""
        return _read_range(self._part(manifest.sha_hex), *manifest.piece_range(index))

    def finish_partial(self, manifest: Manifest, *, pinned: bool = False, digest: bytes | None = None) -> StoredModel:
        """Check the whole file against its SHA-256 and make it a model of the store.
        ``digest``: the file's SHA-256 as the puller computed it from the pieces written
        (``Puller`` hashes while it pulls); without it, the file is read and hashed here."""
        sha = manifest.sha_hex
        part = self._part(sha)
        done = self._db.execute("SELECT COUNT(*) FROM partial_pieces WHERE sha = ?", (sha,)).fetchone()[0]
        if done != len(manifest.pieces):
            raise ModelError(f"pull of {sha[:12]} has {done} of {len(manifest.pieces)} pieces")
        if digest is None:
            whole = hashlib.sha256()
            with open(part, "rb") as f:
                while chunk := f.read(COPY_CHUNK):
                    whole.update(chunk)
            digest = whole.digest()
        if digest.hex() != sha:
            self.drop_partial(sha)
            raise ManifestError(f"the pulled file does not hash to {sha[:12]}; thrown away (pull again)")
        os.replace(part, self.path(sha))
        self._insert(manifest, pinned=pinned)
        self._db.execute("DELETE FROM partial_pieces WHERE sha = ?", (sha,))
        self._db.execute("DELETE FROM partial WHERE sha = ?", (sha,))
        return self.resolve(sha)

    def drop_partial(self, sha: str) -> None:
        self._db.execute("DELETE FROM partial_pieces WHERE sha = ?", (sha,))
        self._db.execute("DELETE FROM partial WHERE sha = ?", (sha,))
        self._part(sha).unlink(missing_ok=True)

    def _part(self, sha: str) -> Path:
        return self.root / "partial" / f"{sha}.part"


def _stored(r) -> StoredModel:
    sha, name, size, family, params, quant, ctx, added, used, pinned = r
    return StoredModel(sha=sha, card=ModelCard(name=name, family=family, parameters=params, quantisation=quant,
                                               context_length=ctx),
                       size=size, added_at=added, last_used=used, pinned=bool(pinned))


def _read_range(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _gb(n: int | None) -> str:
    return f"{(n or 0) / 1e9:.2f} GB"
