"""Fuzzing the model-store decoders (mesh.models): manifests off the wire (only
``ManifestError`` may come out, and what is accepted is self-consistent), models.piece
args (``InvalidRequest`` only) and members' models.list answers (malformed rows dropped)."""

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

from mesh.models.manifest import MIN_PIECE, Manifest, ModelCard


def _seed_manifest() -> dict:
    data = random.Random(1).randbytes(3 * MIN_PIECE + 123)
    pieces = tuple(hashlib.sha256(data[i:i + MIN_PIECE]).digest() for i in range(0, len(data), MIN_PIECE))
    m = Manifest(hashlib.sha256(data).digest(), len(data), MIN_PIECE, pieces,
                 ModelCard(name="seed-1M", family="llama", parameters=10**6, quantisation="Q4_1", context_length=2048))
    return msgpack.unpackb(msgpack.packb(m.signed_by(seeds.SENDER).to_wire()))


SEED = _seed_manifest()
LIST = {"peer": "x", "loaded": ["seed-1M"], "models": [
    {"sha256": SEED["sha256"].hex(), "size": SEED["size"], **SEED["info"], "pinned": False, "last_used": 1.0}]}


def test_controls_the_seeds_are_accepted_and_a_forgery_is_not():
    assert targets.model_manifest(SEED, publisher=seeds.SENDER.peer_id) is not targets.REFUSED
    forged = {**SEED, "sig": bytes(64)}
    assert targets.model_manifest(forged) is targets.REFUSED
    assert targets.model_piece_args({"sha256": "a" * 64, "index": 3}) == ("a" * 64, 3)
    assert targets.model_list_answer(LIST)["models"][0]["name"] == "seed-1M"


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
