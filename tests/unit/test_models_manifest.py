"""Model manifests (mesh.models.manifest): built from a file, signed, checked on the wire."""

from __future__ import annotations

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
    ({"info": [1]}, "info must be a map"),
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
