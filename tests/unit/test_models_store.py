"""The model store (mesh.models.store): content-addressed files, names and GGUF cards,
the disk budget with least-recently-used eviction, and resumable partial pulls."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from mesh.errors import ManifestError, ModelError, ModelNotFound, ModelStoreFull
from mesh.models.manifest import MIN_PIECE, Manifest
from mesh.models.store import ModelStore
from support.gguf_files import write_gguf

PLENTY = lambda p: 10**12  # noqa: E731 - a disk with room


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        self.t += 1
        return self.t


def store_at(path, **kw):
    return ModelStore(path, clock=Clock(), free_bytes=PLENTY, piece_size=MIN_PIECE, **kw)


def test_add_imports_a_copy_named_and_described_from_its_header(tmp_path):
    src = write_gguf(tmp_path / "tiny-7M-F32.gguf", size=200_000, size_label="7M", context=4096)
    store = store_at(tmp_path / "store")
    m = store.add(src)
    assert (m.name, m.card.family, m.card.parameters, m.card.quantisation, m.card.context_length) == (
        "tiny-7M", "llama", 7_000_000, "F32", 4096)
    assert store.path(m.sha).read_bytes() == src.read_bytes() and src.exists()
    assert store.resolve("tiny-7M") == store.resolve(m.sha) == store.resolve(m.sha[:12]) == m
    assert store.add(src, name="other") == m  # same bytes, same model
    assert store.manifest(m.sha).size == m.size and len(store.manifest(m.sha).pieces) == 4
    assert store.read_piece(m.sha, 3) == src.read_bytes()[3 * MIN_PIECE:]


def test_a_file_that_is_not_a_model_is_refused_and_nothing_is_kept(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"hello" * 100)
    store = store_at(tmp_path / "store")
    with pytest.raises(ModelError, match="not a GGUF file"):
        store.add(bad)
    assert store.list() == [] and not any((tmp_path / "store" / "blobs").iterdir())
    assert not any((tmp_path / "store" / "tmp").iterdir())


def test_unknown_and_ambiguous_names_say_what_exists(tmp_path):
    store = store_at(tmp_path / "store")
    a = store.add(write_gguf(tmp_path / "a.gguf", seed=1), name="same")
    store.add(write_gguf(tmp_path / "b.gguf", seed=2), name="same")
    with pytest.raises(ModelNotFound, match="names 2 models"):
        store.resolve("same")
    with pytest.raises(ModelNotFound, match="it has: same"):
        store.resolve("missing")
    with pytest.raises(ModelNotFound):
        store.resolve(a.sha[:6])  # too short a prefix to be a name for a hash


def test_the_budget_evicts_the_least_recently_used_unpinned_model(tmp_path):
    store = store_at(tmp_path / "store", max_bytes=700_000)
    a = store.add(write_gguf(tmp_path / "a.gguf", seed=1), name="a")
    b = store.add(write_gguf(tmp_path / "b.gguf", seed=2), name="b")
    store.touch(a.sha)  # b is now the least recently used
    c = store.add(write_gguf(tmp_path / "c.gguf", seed=3), name="c")
    assert {m.name for m in store.list()} == {"a", "c"} and store.evictions == 1
    assert not store.path(b.sha).exists()
    store.pin("a")
    store.pin("c")
    with pytest.raises(ModelStoreFull, match="remove or unpin"):
        store.add(write_gguf(tmp_path / "d.gguf", seed=4), name="d")
    assert {m.name for m in store.list()} == {"a", "c"} and store.path(c.sha).exists()


def test_a_full_disk_refuses_before_anything_is_written(tmp_path):
    store = ModelStore(tmp_path / "store", free_bytes=lambda p: 100, piece_size=MIN_PIECE)
    with pytest.raises(ModelStoreFull, match="does not fit the disk"):
        store.add(write_gguf(tmp_path / "a.gguf"))
    assert store.list() == [] and not any((tmp_path / "store" / "blobs").iterdir())


def _published(tmp_path):
    """A source store holding model "a": (source, the model, its manifest, its pieces)."""
    source = store_at(tmp_path / "source")
    m = source.add(write_gguf(tmp_path / "a.gguf"), name="a")
    manifest = source.manifest(m.sha)
    return source, m, manifest, [source.read_piece(m.sha, i) for i in range(len(manifest.pieces))]


def test_a_partial_pull_resumes_after_a_restart_and_is_verified_before_it_is_visible(tmp_path):
    source, m, manifest, pieces = _published(tmp_path)
    dest = store_at(tmp_path / "dest")
    assert dest.begin_partial(manifest) == set()
    dest.write_piece(manifest, 0, pieces[0])
    dest.write_piece(manifest, 2, pieces[2])
    assert dest.list() == [] and dest.partials() == [m.sha]
    dest.close()

    again = store_at(tmp_path / "dest")  # a restarted puller
    assert again.begin_partial(manifest) == {0, 2}
    with pytest.raises(ModelError, match=f"has 2 of {len(pieces)} pieces"):
        again.finish_partial(manifest)
    for i in set(range(len(pieces))) - {0, 2}:
        again.write_piece(manifest, i, pieces[i])
    got = again.finish_partial(manifest)
    assert got.sha == m.sha and again.path(m.sha).read_bytes() == source.path(m.sha).read_bytes()
    assert again.partials() == [] and not any((tmp_path / "dest" / "partial").iterdir())


def test_a_whole_file_that_does_not_hash_right_is_thrown_away(tmp_path):
    source, m, manifest, pieces = _published(tmp_path)
    dest = store_at(tmp_path / "dest")
    dest.begin_partial(manifest)
    for i, p in enumerate(pieces):
        dest.write_piece(manifest, i, p if i else b"\0" * len(p))  # a caller that skipped check_piece
    with pytest.raises(ManifestError, match="thrown away"):
        dest.finish_partial(manifest)
    assert dest.list() == [] and dest.partials() == [] and not any((tmp_path / "dest" / "blobs").iterdir())


def test_a_resumed_pull_with_another_manifest_is_refused(tmp_path):
    _, _, manifest, _ = _published(tmp_path)
    dest = store_at(tmp_path / "dest")
    dest.begin_partial(manifest)
    other = Manifest(manifest.sha256, manifest.size, manifest.piece_size, (bytes(32),) + manifest.pieces[1:],
                     manifest.info)
    with pytest.raises(ManifestError, match="different manifest"):
        dest.begin_partial(other)
    with pytest.raises(ManifestError, match="is 3 bytes"):
        dest.write_piece(manifest, 0, b"abc")


def test_a_partial_counts_against_the_budget(tmp_path):
    source = store_at(tmp_path / "source")
    m = source.add(write_gguf(tmp_path / "a.gguf", size=400_000), name="a")
    dest = store_at(tmp_path / "dest", max_bytes=500_000)
    dest.begin_partial(source.manifest(m.sha))
    with pytest.raises(ModelStoreFull):
        dest.add(write_gguf(tmp_path / "b.gguf", size=200_000, seed=5))


def test_pieces_written_but_not_committed_are_not_counted_after_a_crash(tmp_path):
    source, m, manifest, pieces = _published(tmp_path)
    dest = store_at(tmp_path / "dest")
    dest.begin_partial(manifest)
    dest.write_piece(manifest, 0, pieces[0], commit=False)
    dest.write_piece(manifest, 1, pieces[1], commit=False)
    dest.commit_pieces(manifest, [0])
    dest.write_piece(manifest, 2, pieces[2], commit=False)
    dest.close()  # the puller dies here: 1 and 2 were never committed
    assert store_at(tmp_path / "dest").begin_partial(manifest) == {0}


def _aligned(data: bytes) -> memoryview:
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[:len(data)] = data
    return memoryview(buf)[:len(data)]


def test_pieces_from_a_page_aligned_buffer_go_to_the_disk_directly_tail_and_all(tmp_path):
    source, m, manifest, pieces = _published(tmp_path)
    assert len(pieces[-1]) % 4096  # the last piece ends mid-block: its tail goes through the page cache
    dest = store_at(tmp_path / "dest")
    dest.begin_partial(manifest)
    for i, piece in enumerate(pieces):
        dest.write_piece(manifest, i, _aligned(piece), direct=True)
    assert dest.direct_bytes == sum(len(p) // 4096 * 4096 for p in pieces) > 0
    assert dest.finish_partial(manifest).sha == m.sha
    assert dest.path(m.sha).read_bytes() == source.path(m.sha).read_bytes()


def test_a_file_system_without_direct_writes_gets_them_through_the_page_cache(tmp_path, monkeypatch):
    source, m, manifest, pieces = _published(tmp_path)
    dest = store_at(tmp_path / "dest")
    dest.begin_partial(manifest)
    real_open = os.open

    def no_direct(path, flags, *a, **kw):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_direct)
    for i, piece in enumerate(pieces):
        dest.write_piece(manifest, i, _aligned(piece), direct=True)
    assert dest.direct_bytes == 0
    assert dest.finish_partial(manifest).sha == m.sha
