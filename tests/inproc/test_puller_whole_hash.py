"""The puller's whole-file SHA-256, computed while the pieces arrive (mesh.models.puller):
a real store on disk, sources that are plain functions (no sockets). Pieces out of
order and a resumed pull still give the file's digest; a manifest whose pieces are
right but whose SHA-256 names another file cannot make that file visible."""

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


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(os.urandom(PIECES * MIN_PIECE - 100))
    return path, build(path, ModelCard(name="m"), piece_size=MIN_PIECE)


def _source(path, manifest, *, order_delay=None, fail_from=None):
    data = path.read_bytes()

    async def fetch(index: int) -> bytes:
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
    with pytest.raises(ManifestError, match="does not hash to"):
        asyncio.run(Puller(store=store, manifest=lying, sources={"a": _source(path, lying)}).run())
    assert store.list() == [] and store.partial_manifest(lying.sha_hex) is None
    assert not store.path(lying.sha_hex).exists()
