"""Fuzzing the model-store decoders (mesh.models): manifests off the wire (only
``ManifestError`` may come out, and what is accepted is self-consistent), models.piece
and models.bulk args (``InvalidRequest`` only), models.bulk answers and members'
models.list answers (malformed ones dropped), and bulk piece stream bytes, both ways
(only ``BulkStreamError``)."""

from __future__ import annotations

import hashlib
import random

import msgpack
import mutate
import seeds
import targets
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from mesh.models import bulk_wire
from mesh.models.manifest import MIN_PIECE, Manifest, ModelCard


def _seed_manifest() -> dict:
    data = random.Random(1).randbytes(3 * MIN_PIECE + 123)
    pieces = tuple(hashlib.sha256(data[i:i + MIN_PIECE]).digest() for i in range(0, len(data), MIN_PIECE))
    m = Manifest(hashlib.sha256(data).digest(), len(data), MIN_PIECE, pieces,
                 ModelCard(name="seed-1M", family="llama", parameters=10**6, quantisation="Q4_1", context_length=2048))
    return msgpack.unpackb(msgpack.packb(m.signed_by(seeds.SENDER).to_wire()))


SEED = _seed_manifest()
KEYS = bulk_wire.SessionKeys(to_source=bytes(range(32)), to_puller=bytes(range(32, 64)))
TO_SOURCE = {bulk_wire.GET: bulk_wire.INDEX.size}
TO_PULLER = {bulk_wire.PIECE: 4096, bulk_wire.NO: bulk_wire.MAX_REASON}
BULK_ARGS = {"sha256": "a" * 64, "key": bytes(32)}
BULK_ANSWER = {"port": 7413, "key": bytes(range(32)), "ticket": bytes(16)}


def _stream(key: bytes, frames: list[tuple[int, bytes]]) -> bytes:
    sealer = bulk_wire.Sealer(key)
    return b"".join(h + s for h, s in (sealer.seal(kind, plaintext) for kind, plaintext in frames))


GETS = _stream(KEYS.to_source, [(bulk_wire.GET, bulk_wire.get_frame(i)) for i in (0, 5, 7)])
PIECES = _stream(KEYS.to_puller, [(bulk_wire.PIECE, random.Random(2).randbytes(4096)),
                                  (bulk_wire.NO, b"not here"), (bulk_wire.PIECE, b"x" * 100)])
LIST = {"peer": "x", "loaded": ["seed-1M"], "models": [
    {"sha256": SEED["sha256"].hex(), "size": SEED["size"], **SEED["info"], "pinned": False, "last_used": 1.0}]}


def test_controls_the_seeds_are_accepted_and_a_forgery_is_not():
    assert targets.model_manifest(SEED, publisher=seeds.SENDER.peer_id) is not targets.REFUSED
    forged = {**SEED, "sig": bytes(64)}
    assert targets.model_manifest(forged) is targets.REFUSED
    assert targets.model_piece_args({"sha256": "a" * 64, "index": 3}) == ("a" * 64, 3)
    assert targets.model_list_answer(LIST)["models"][0]["name"] == "seed-1M"
    assert targets.model_bulk_args(BULK_ARGS) == ("a" * 64, bytes(32))
    assert targets.model_bulk_answer(BULK_ANSWER) == (7413, bytes(range(32)), bytes(16))
    assert [k for k, _ in targets.bulk_stream(GETS, KEYS.to_source, TO_SOURCE)] == [bulk_wire.GET] * 3
    assert [k for k, _ in targets.bulk_stream(PIECES, KEYS.to_puller, TO_PULLER)] == [2, 3, 2]
    assert targets.bulk_stream(PIECES, KEYS.to_source, TO_PULLER) is targets.REFUSED  # another key


@fuzz(400)
@given(st.randoms(use_true_random=False))
def test_mutated_manifests(rng):
    targets.model_manifest(mutate.tree_mutation(SEED, rng))


@fuzz(300)
@given(st.randoms(use_true_random=False))
def test_manifest_bytes_mutated_then_decoded(rng):
    raw = mutate.bytes_mutation(msgpack.packb(SEED), rng)
    try:
        value = msgpack.unpackb(raw, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not msgpack: the RPC layer refuses it before here
        return
    targets.model_manifest(value)


@fuzz(300)
@given(st.randoms(use_true_random=False))
def test_mutated_piece_args_and_list_answers(rng):
    targets.model_piece_args(mutate.tree_mutation({"sha256": "a" * 64, "index": 3}, rng))
    targets.model_list_answer(mutate.tree_mutation(LIST, rng))


@fuzz(300)
@given(st.randoms(use_true_random=False))
def test_mutated_bulk_args_and_answers(rng):
    targets.model_bulk_args(mutate.tree_mutation(BULK_ARGS, rng))
    targets.model_bulk_answer(mutate.tree_mutation(BULK_ANSWER, rng))


@fuzz(400)
@given(st.randoms(use_true_random=False))
def test_mutated_bulk_stream_bytes_both_ways(rng):
    targets.bulk_stream(mutate.bytes_mutation(GETS, rng), KEYS.to_source, TO_SOURCE)
    targets.bulk_stream(mutate.bytes_mutation(PIECES, rng), KEYS.to_puller, TO_PULLER)
