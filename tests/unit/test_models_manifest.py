"""Model manifests (mesh.models.manifest): built from a file, signed, checked on the wire."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from mesh.errors import ManifestError
from mesh.identity.keys import Identity
from mesh.models.manifest import MAX_PIECES, MIN_PIECE, Manifest, ModelCard, build, check_name, piece_size_for
from support.gguf_files import write_gguf


@pytest.fixture
def manifest(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", size=300_000)
    return build(path, ModelCard(name="m-1M", family="llama", parameters=10**6), piece_size=MIN_PIECE)


def test_a_file_is_cut_into_pieces_each_with_its_hash(tmp_path, manifest):
    data = (tmp_path / "m.gguf").read_bytes()
    assert manifest.size == len(data) and len(manifest.pieces) == 5
    for i in range(5):
        offset, length = manifest.piece_range(i)
        assert manifest.check_piece(i, data[offset:offset + length])
    assert not manifest.check_piece(0, b"x" + data[1:MIN_PIECE])
    assert not manifest.check_piece(4, data[4 * MIN_PIECE:-1])  # one byte short
    with pytest.raises(ManifestError, match="not in a model of 5 pieces"):
        manifest.piece_range(5)


def test_a_signed_manifest_round_trips_and_names_its_publisher(manifest):
    who = Identity.generate()
    signed = manifest.signed_by(who)
    wire = msgpack.unpackb(msgpack.packb(signed.to_wire()))
    back = Manifest.from_wire(wire, publisher=who.peer_id)
    assert back == signed and back.same_model(manifest) and back.publisher == who.peer_id


def test_a_manifest_from_another_peer_or_changed_on_the_way_is_refused(manifest):
    who, other = Identity.generate(), Identity.generate()
    wire = manifest.signed_by(who).to_wire()
    with pytest.raises(ManifestError, match="not by the peer that sent it"):
        Manifest.from_wire(wire, publisher=other.peer_id)
    for field, value in [("size", wire["size"] + 1), ("pieces", bytes(32) + wire["pieces"][32:]),
                         ("info", {**wire["info"], "name": "evil"})]:
        with pytest.raises(ManifestError, match="signature does not verify"):
            Manifest.from_wire({**wire, field: value})
    with pytest.raises(ManifestError, match="key is not its publisher"):
        Manifest.from_wire({**wire, "key": other.public_raw})


@pytest.mark.parametrize("change, error", [
    ({"v": 2}, "version"), ({"sha256": b"x"}, "sha256 must be 32 bytes"), ({"size": 0}, "size must be"),
    ({"size": "1"}, "size must be"), ({"piece_size": 1}, "piece_size must be"),
    ({"pieces": b"x" * 31}, "piece hashes"), ({"sig": b""}, "64-byte signature"),
    ({"info": {"name": "../etc"}}, "model name"), ({"info": {"name": "a", "parameters": -1}}, "non-negative"),
    ({"info": [1]}, "info must be a map"), ({"chain": b"x" * 31}, "a chain is 32 bytes"),
    ({"chain_sig": b""}, "a chain is 32 bytes"),
])
def test_malformed_fields_are_refused_with_a_reason(manifest, change, error):
    wire = manifest.signed_by(Identity.generate()).to_wire()
    with pytest.raises(ManifestError, match=error):
        Manifest.from_wire({**wire, **change})
    with pytest.raises(ManifestError, match="must be a map"):
        Manifest.from_wire([wire])


def test_piece_size_grows_so_the_piece_list_stays_bounded():
    assert piece_size_for(10**9) == 4 * 1024 * 1024
    big = 200 * 10**9
    assert -(-big // piece_size_for(big)) <= MAX_PIECES


def test_model_names_are_plain():
    assert check_name("SmolLM2-135M-Instruct.Q4_1") == "SmolLM2-135M-Instruct.Q4_1"
    for bad in ("", "../x", "a b", "-x", "x" * 129, None):
        with pytest.raises(ManifestError):
            check_name(bad)


def test_the_chain_lets_each_piece_prove_its_place_in_the_whole_file(tmp_path, manifest):
    data = (tmp_path / "m.gguf").read_bytes()
    assert manifest.proves_whole and len(manifest.chain) == 4  # one chaining value per piece boundary
    pieces = [data[o:o + n] for o, n in map(manifest.piece_range, range(5))]
    assert all(manifest.check_piece(i, bytearray(p)) for i, p in enumerate(pieces))
    # a piece in another place, or a chain value changed, fails (the piece hashes alone would pass it)
    swapped = dataclasses.replace(manifest, pieces=(manifest.pieces[1], manifest.pieces[0], *manifest.pieces[2:]))
    assert not swapped.check_piece(0, pieces[1])
    bent = dataclasses.replace(manifest, chain=(bytes(32), *manifest.chain[1:]))
    assert not bent.check_piece(0, pieces[0]) and not bent.check_piece(1, pieces[1])
    assert bent.check_piece(2, pieces[2])
    # the last piece's check ends at the file's SHA-256
    other = dataclasses.replace(manifest, sha256=bytes(32))
    assert not other.check_piece(4, pieces[4]) and other.check_piece(3, pieces[3])


def test_the_chain_is_signed_apart_so_older_peers_still_verify_the_rest(manifest):
    who = Identity.generate()
    wire = msgpack.unpackb(msgpack.packb(manifest.signed_by(who).to_wire()))
    back = Manifest.from_wire(wire, publisher=who.peer_id)
    assert back.chain == manifest.chain and back.proves_whole
    old_reader = {k: v for k, v in wire.items() if k not in ("chain", "chain_sig")}  # what a peer before it reads
    plain = Manifest.from_wire(old_reader, publisher=who.peer_id)
    assert plain.chain == () and plain.same_model(back)
    with pytest.raises(ManifestError, match="signature does not verify"):  # a chain value changed on the way
        Manifest.from_wire({**wire, "chain": bytes(32) + wire["chain"][32:]})
    stored = Manifest.from_store(manifest.to_store())
    assert stored.chain == manifest.chain and stored.same_model(manifest)
    assert not dataclasses.replace(manifest, chain=(bytes(32), *manifest.chain[1:])).same_model(manifest)
