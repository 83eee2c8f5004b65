"""``Puller``: fetch one model's pieces from several peers at once into the store.

The caller (``ModelService``) has found the peers that hold the model and checked their
manifests; the puller gets the manifest they agree on and, per source, an async
``fetch(index, into)``: the piece's bytes, decrypted straight into ``into`` (a writable
buffer of the piece's length, returned as it) when it can, else as bytes of its own.
Then:

- ``store.begin_partial`` says which pieces a previous pull (crashed, cut off) already
  has; only the others are asked for.
- Each source runs ``per_source`` workers; a ``PieceSchedule`` hands each the next piece.
  Pieces are written at once and made durable (one fsync, one SQLite transaction) in
  batches: every ``commit_bytes`` or every second, and when the pull ends or stops; a
  crash loses at most the last batch, fetched again on resume.
  A piece is checked against the manifest before it is written; a piece that fails is
  refused, counted (``bad_pieces``) and its sender is not asked again for this model.
  A source that fails ``max_failures`` times in a row (a dead or unreachable peer) is
  dropped; its pieces go to the others.
- ``pacer`` (``--pull-rate``) caps the bandwidth of the whole pull.
- The whole file must hash to its content address before it becomes visible. With a
  manifest that carries SHA-256 chaining values (``Manifest.proves_whole``), checking
  every piece proves it: the pull reads each byte once (pieces kept from an earlier run
  are checked again first). Without, the file's SHA-256 is computed while the pull runs,
  each piece fed in order as soon as it and every piece before it are written (held in
  memory when just ahead, else read back). ``store.finish_partial`` compares the digest
  with the content address and makes the model visible. When no source is left, the
  pull stops with ``PullStopped``, and the pieces written so far stay for the next try.

Progress goes to ``on_progress(PullProgress)`` after every piece.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import mmap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.clock import Clock, SystemClock
from mesh.errors import MeshError, ModelError, PullStopped
from mesh.models.manifest import Manifest
from mesh.models.rate import BytePacer
from mesh.models.schedule import PieceSchedule
from mesh.models.store import ModelStore, StoredModel

Fetch = Callable[[int, memoryview], Awaitable[Any]]


@dataclass
class PullProgress:
    sha: str
    name: str
    size: int
    pieces: int
    pieces_done: int
    bytes_done: int  # this run's and a resumed pull's earlier pieces
    resumed_pieces: int
    fetched: int = 0  # bytes fetched in this run
    by_source: dict[str, int] = field(default_factory=dict)  # pieces each source delivered in this run
    elapsed_s: float = 0.0

    def to_wire(self) -> dict:
        return {"sha256": self.sha, "name": self.name, "size": self.size, "pieces": self.pieces,
                "pieces_done": self.pieces_done, "bytes_done": self.bytes_done,
                "resumed_pieces": self.resumed_pieces, "fetched": self.fetched, "by_source": dict(self.by_source),
                "elapsed_s": round(self.elapsed_s, 3)}


@dataclass
class PullResult:
    model: StoredModel
    progress: PullProgress
    bytes_fetched: int
    bad_pieces: dict[str, int]  # source -> pieces refused (the source was then banned)
    dropped: list[str]  # sources that stopped answering
    seconds: float

    def to_wire(self) -> dict:
        return {"model": self.model.to_wire(), "progress": self.progress.to_wire(),
                "bytes_fetched": self.bytes_fetched, "bad_pieces": dict(self.bad_pieces),
                "dropped": list(self.dropped), "seconds": round(self.seconds, 3)}


class Puller:
    def __init__(self, *, store: ModelStore, manifest: Manifest, sources: dict[str, Fetch],
                 pacer: BytePacer | None = None, clock: Clock | None = None, per_source: int = 2,
                 max_failures: int = 3, on_progress: Callable[[PullProgress], None] | None = None,
                 on_bad_piece: Callable[[str], None] | None = None, pinned: bool = False,
                 commit_bytes: int = 64 * 1024 * 1024) -> None:
        self.store = store
        self.manifest = manifest
        self.sources = sources
        self.pacer = pacer or BytePacer(0)
        self.clock = clock or SystemClock()
        self.per_source = per_source
        self.max_failures = max_failures
        self.on_progress = on_progress or (lambda p: None)
        self.on_bad_piece = on_bad_piece or (lambda source: None)
        self.pinned = pinned
        self.commit_bytes = commit_bytes  # pieces are fsync'd and marked done this many bytes at a time
        self.bad_pieces: dict[str, int] = {}
        self.errors: dict[str, str] = {}  # source -> its last failure, for the report
        self.bytes_fetched = 0

    async def run(self) -> PullResult:
        m = self.manifest
        started = time.monotonic()
        done = await asyncio.to_thread(self.store.begin_partial, m)
        if m.proves_whole and done:  # a piece kept from before counts toward the proof once checked again
            done = await asyncio.to_thread(self._recheck, done)
        schedule = PieceSchedule(len(m.pieces), done=done, sources=self.sources, max_failures=self.max_failures)
        progress = PullProgress(sha=m.sha_hex, name=m.info.name, size=m.size, pieces=len(m.pieces),
                                pieces_done=len(done), bytes_done=sum(m.piece_range(i)[1] for i in done),
                                resumed_pieces=len(done))
        self.on_progress(progress)

        changed = asyncio.Event()  # a piece was done or given back: idle workers look again
        written = set(done)  # on disk (committed or not): the whole-file hash may read them
        whole = None if m.proves_whole else _InOrderHash(self.store, m, written)
        uncommitted: list[int] = []  # written, not yet fsync'd and marked done (commit_bytes, or a second)
        committed_at = [time.monotonic()]

        async def next_piece(source: str) -> int | None:
            while True:
                index = schedule.next_for(source)
                if index is not None or schedule.finished or source not in schedule.active():
                    return index
                if not schedule.in_flight:  # nothing left to do, nothing that may come back
                    return None
                changed.clear()
                await changed.wait()

        def settle() -> None:
            changed.set()

        async def worker(source: str, fetch: Fetch) -> None:
            buf = mmap.mmap(-1, m.piece_size)  # page-aligned: the piece goes from here to the disk (O_DIRECT)
            try:
                await work(source, fetch, buf)
            finally:
                try:
                    buf.close()
                except BufferError:  # a fetch cancelled in its thread may still hold a view of it
                    pass

        async def work(source: str, fetch: Fetch, buf: mmap.mmap) -> None:
            while (index := await next_piece(source)) is not None:
                length = m.piece_range(index)[1]
                wait = self.pacer.reserve(length, self.clock())
                if wait > 0:
                    await self.clock.sleep(wait)
                into = memoryview(buf)[:length]
                try:
                    data = await fetch(index, into)
                except asyncio.CancelledError:
                    raise
                except (MeshError, OSError, ValueError, TypeError) as e:
                    self.errors[source] = f"{type(e).__name__}: {e}"
                    schedule.failed(source, index)
                    settle()
                    continue
                try:  # checked, then written, in one trip to a thread (hashing frees the loop)
                    ok = await asyncio.to_thread(self._check_and_write, index, data, into)
                except OSError as e:
                    raise ModelError(f"cannot write piece {index} of {m.info.name}: {e.strerror or e}; "
                                     "the pieces written so far are kept") from None
                if not ok:
                    self.bad_pieces[source] = self.bad_pieces.get(source, 0) + 1
                    self.errors[source] = f"piece {index} failed its SHA-256"
                    self.on_bad_piece(source)
                    schedule.bad(source, index)
                    settle()
                    return
                written.add(index)
                if whole is not None:
                    whole.offer(index, data)
                try:
                    uncommitted.append(index)
                    now = time.monotonic()
                    if len(uncommitted) * m.piece_size >= self.commit_bytes or now - committed_at[0] >= 1.0:
                        batch, uncommitted[:], committed_at[0] = list(uncommitted), [], now
                        await asyncio.to_thread(self.store.commit_pieces, m, batch)
                except OSError as e:
                    raise ModelError(f"cannot write piece {index} of {m.info.name}: {e.strerror or e}; "
                                     "the pieces written so far are kept") from None
                schedule.done_by(source, index)
                settle()
                self.bytes_fetched += length
                progress.pieces_done += 1
                progress.bytes_done += length
                progress.fetched += length
                progress.by_source[source] = progress.by_source.get(source, 0) + 1
                progress.elapsed_s = time.monotonic() - started
                self.on_progress(progress)

        # every piece checked against the chain proves the file (nothing to hash again); else hash it in order
        hashing = asyncio.ensure_future(whole.run() if whole is not None else _value(m.sha256))
        try:
            if not schedule.finished:
                try:
                    async with asyncio.TaskGroup() as group:
                        for source, fetch in self.sources.items():
                            for _ in range(self.per_source):
                                group.create_task(worker(source, fetch))
                except ExceptionGroup as group_error:  # a worker could not write: say why, as itself
                    raise group_error.exceptions[0] from None
                finally:  # what was written is kept for a resume, stopped or not
                    await asyncio.to_thread(self.store.commit_pieces, m, uncommitted)
            digest = await hashing if schedule.finished else None
        finally:
            hashing.cancel()
        if not schedule.finished:
            why = "; ".join(f"{s[:12]}: {e}" for s, e in sorted(self.errors.items())) or "no source to ask"
            raise PullStopped(
                f"pull of {m.info.name} ({m.sha_hex[:12]}) stopped at {progress.pieces_done} of {progress.pieces} "
                f"pieces: no source left ({why}); the pieces fetched are kept: pull again to resume")
        # a chain this peer could not check is not kept (it would vouch for it when it serves the model)
        kept = m if m.proves_whole else dataclasses.replace(m, chain=(), chain_sig=b"")
        model = await asyncio.to_thread(self.store.finish_partial, kept, pinned=self.pinned, digest=digest)
        progress.elapsed_s = time.monotonic() - started
        return PullResult(model=model, progress=progress, bytes_fetched=self.bytes_fetched,
                          bad_pieces=dict(self.bad_pieces), dropped=sorted(schedule.dropped),
                          seconds=progress.elapsed_s)

    def _recheck(self, done: set[int]) -> set[int]:
        """The resumed pieces that still pass their check (read back from the partial file);
        the others are fetched again."""
        return {i for i in sorted(done) if self.manifest.check_piece(i, self.store.read_partial_piece(self.manifest, i))}

    def _check_and_write(self, index: int, data, into: memoryview) -> bool:
        """False (nothing written) when ``data`` fails piece ``index``'s check. Written
        from ``into`` (page-aligned: straight to the disk), copied there first if the
        fetch returned bytes of its own."""
        if not self.manifest.check_piece(index, data):
            return False
        if data is not into:
            into[:] = data
        self.store.write_piece(self.manifest, index, into, commit=False, direct=True)
        return True


async def _value(v):
    return v


class _InOrderHash:
    """The whole file's SHA-256, fed piece by piece in order as the pieces are written;
    ``run`` returns the digest once the last piece is in. A piece written just ahead of
    the hash (within ``HOLD_BYTES``) is kept in memory until its turn; any other (a
    resumed pull's, one far ahead from a faster source) is read back from the partial
    file then, so memory stays bounded."""

    HOLD_BYTES = 32 << 20

    def __init__(self, store: ModelStore, manifest: Manifest, written: set[int]) -> None:
        self.store = store
        self.manifest = manifest
        self.written = written
        self._hash = hashlib.sha256()
        self._next = 0
        self._held: dict[int, bytes] = {}
        self._more = asyncio.Event()

    def offer(self, index: int, data: bytes) -> None:
        """Piece ``index`` was written (``data``, checked)."""
        if (index - self._next + 1) * self.manifest.piece_size <= self.HOLD_BYTES:
            self._held[index] = bytes(data)  # the worker's buffer is reused for its next piece
        self._more.set()

    async def run(self) -> bytes:
        count = len(self.manifest.pieces)
        while self._next < count:
            if self._next not in self.written:
                self._more.clear()
                await self._more.wait()
                continue
            end = self._next
            while end < count and end in self.written and end - self._next < 16:
                end += 1
            await asyncio.to_thread(self._feed, self._next, end)
            self._next = end
        return self._hash.digest()

    def _feed(self, start: int, end: int) -> None:
        for index in range(start, end):
            data = self._held.pop(index, None)
            self._hash.update(data if data is not None else self.store.read_partial_piece(self.manifest, index))
