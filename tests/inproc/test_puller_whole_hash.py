"""The puller's proof of the whole file (mesh.models.puller): a real store on disk,
sources that are plain functions (no sockets), in both modes: a manifest with SHA-256
chaining values (each piece's check proves the file: one pass) and one without (the
file's SHA-256 computed in order while the pieces arrive). Pieces out of order and a
resumed pull still give the file; a manifest whose pieces are right but whose SHA-256
names another file cannot make that file visible; a kept piece spoiled on disk before a
resume is fetched again."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os

import pytest

from mesh.errors import ManifestError, PullStopped
from mesh.models.manifest import MIN_PIECE, ModelCard, build
from mesh.models.puller import Puller
from mesh.models.store import ModelStore

PIECES = 12


@pytest.fixture(params=["chain", "in-order hash"])
def model(tmp_path, request):
    path = tmp_path / "m.bin"
    path.write_bytes(os.urandom(PIECES * MIN_PIECE - 100))
    manifest = build(path, ModelCard(name="m"), piece_size=MIN_PIECE)
    assert manifest.proves_whole and len(manifest.chain) == PIECES - 1
    return path, manifest if request.param == "chain" else dataclasses.replace(manifest, chain=())


def _source(path, manifest, *, order_delay=None, fail_from=None):
    data = path.read_bytes()

    async def fetch(index: int, into=None) -> bytes:
        if fail_from is not None and index >= fail_from:
            raise OSError("source gone")
        if order_delay is not None:
            await asyncio.sleep(order_delay(index))
        offset, length = manifest.piece_range(index)
        return data[offset:offset + length]

    return fetch


def test_pieces_arriving_out_of_order_give_the_files_digest(tmp_path, model):
    path, manifest = model
    store = ModelStore(tmp_path / "store")
    # later pieces come first: the hash must wait for the earlier ones
    fetch = _source(path, manifest, order_delay=lambda i: 0.002 * (PIECES - i))
    result = asyncio.run(Puller(store=store, manifest=manifest, sources={"a": fetch}, per_source=6).run())
    assert store.path(result.model.sha).read_bytes() == path.read_bytes()
    assert store.direct_bytes >= (PIECES - 1) * MIN_PIECE  # written past the page cache
    assert result.model.sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_resumed_pull_hashes_the_pieces_it_had_from_disk(tmp_path, model):
    path, manifest = model
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PullStopped):  # the only source dies half way
        asyncio.run(Puller(store=store, manifest=manifest, sources={"a": _source(path, manifest, fail_from=6)},
                           per_source=1, max_failures=1).run())
    assert store.partial_manifest(manifest.sha_hex) is not None
    result = asyncio.run(Puller(store=store, manifest=manifest, sources={"b": _source(path, manifest)}).run())
    assert result.progress.resumed_pieces == 6
    assert store.path(result.model.sha).read_bytes() == path.read_bytes()


def test_a_manifest_naming_another_files_sha256_cannot_make_its_pieces_visible(tmp_path, model):
    path, manifest = model
    store = ModelStore(tmp_path / "store")
    lying = dataclasses.replace(manifest, sha256=hashlib.sha256(b"another model").digest())
    if manifest.proves_whole:  # the last piece cannot reach the claimed SHA-256: refused, never visible
        with pytest.raises(PullStopped, match=f"piece {PIECES - 1} failed"):
            asyncio.run(Puller(store=store, manifest=lying, sources={"a": _source(path, lying)}).run())
    else:
        with pytest.raises(ManifestError, match="does not hash to"):
            asyncio.run(Puller(store=store, manifest=lying, sources={"a": _source(path, lying)}).run())
        assert store.partial_manifest(lying.sha_hex) is None
    assert store.list() == []
    assert not store.path(lying.sha_hex).exists()


def test_a_kept_piece_spoiled_on_disk_before_a_resume_is_fetched_again(tmp_path, model):
    path, manifest = model
    store = ModelStore(tmp_path / "store")
    with pytest.raises(PullStopped):
        asyncio.run(Puller(store=store, manifest=manifest, sources={"a": _source(path, manifest, fail_from=6)},
                           per_source=1, max_failures=1).run())
    part = next((tmp_path / "store").rglob(f"{manifest.sha_hex}*.part"))
    with open(part, "r+b") as f:  # a bit of piece 2 flips while the pull waits
        f.seek(2 * MIN_PIECE + 5)
        byte = f.read(1)
        f.seek(2 * MIN_PIECE + 5)
        f.write(bytes([byte[0] ^ 1]))
    fetched = []
    source = _source(path, manifest)

    async def counting(index: int, into=None) -> bytes:
        fetched.append(index)
        return await source(index, into)

    if manifest.proves_whole:  # checked again before it counts: fetched again, the file is right
        result = asyncio.run(Puller(store=store, manifest=manifest, sources={"b": counting}).run())
        assert sorted(fetched) == [2, *range(6, PIECES)]
        assert store.path(result.model.sha).read_bytes() == path.read_bytes()
    else:  # without a chain, the whole-file hash is what catches it
        with pytest.raises(ManifestError, match="does not hash to"):
            asyncio.run(Puller(store=store, manifest=manifest, sources={"b": counting}).run())
    assert store.list() == [] or store.path(manifest.sha_hex).read_bytes() == path.read_bytes()


def test_models_stored_before_chains_get_theirs(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(os.urandom(5 * MIN_PIECE))
    store = ModelStore(tmp_path / "store", piece_size=MIN_PIECE)
    # a model stored the way a peer before chains stored it
    plain = dataclasses.replace(build(path, ModelCard(name="m"), piece_size=MIN_PIECE), chain=())
    store.begin_partial(plain)
    for i in range(5):
        offset, length = plain.piece_range(i)
        store.write_piece(plain, i, path.read_bytes()[offset:offset + length])
    store.finish_partial(plain)
    assert store.manifest(plain.sha_hex).chain == ()
    assert store.add_missing_chains() == 1 and store.add_missing_chains() == 0
    assert store.manifest(plain.sha_hex).chain == build(path, ModelCard(name="m"), piece_size=MIN_PIECE).chain
