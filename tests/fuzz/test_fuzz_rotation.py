"""Fuzzing key rotation's inputs from real ones: the ``mesh.rotate`` arguments the
authority receives (from a member), the reply the member receives (from whoever answers
``mesh.rotate``) and the journal a restart reads. Only the project's typed errors may
come out; nothing refused is recorded in the authority's log."""

from __future__ import annotations

import json
import os

import mutate
import seeds
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import CertificateError, IdentityError, InvalidRequest
from mesh.identity.authority import MeshAuthority
from mesh.identity.certificate import Certificate
from mesh.identity.rotation import RotationJournal, RotationLog, accept_rotation, handle_rotate, rotation_request
from mesh.identity.transport import TransportKeys

AUTHORITY = MeshAuthority(seeds.AUTHORITY)
CURRENT = Certificate.from_bytes(seeds.certificate(seeds.SENDER))
NEW = seeds.identity(40)
NEW_CURVE = TransportKeys.from_secret(b"\x07" * 32)
ARGS = rotation_request(NEW, NEW_CURVE.public, old_public=CURRENT.peer_public, mesh_id=CURRENT.mesh_id)
REPLY = handle_rotate(ARGS, CURRENT, authority=AUTHORITY, log=RotationLog(), now=seeds.NOW)


def _rotate(args) -> None:
    log = RotationLog()
    try:
        reply = handle_rotate(args, CURRENT, authority=AUTHORITY, log=log, now=seeds.NOW)
    except (InvalidRequest, CertificateError):
        assert len(log) == 0  # nothing refused is recorded
        return
    # admitted: only a request carrying the new key's proof for exactly these keys
    assert args["k"] == NEW.public_raw and args["c"] == NEW_CURVE.public and len(log) == 1
    accept_rotation(reply, current=CURRENT, new_public=NEW.public_raw, new_curve=NEW_CURVE.public,
                    authority_public_raw=AUTHORITY.public_raw, now=seeds.NOW)


def _accept(reply) -> None:
    try:
        accept_rotation(reply, current=CURRENT, new_public=NEW.public_raw, new_curve=NEW_CURVE.public,
                        authority_public_raw=AUTHORITY.public_raw, now=seeds.NOW)
    except CertificateError:
        pass


@fuzz(300)
@given(st.randoms(use_true_random=False))
def test_mutated_rotate_arguments(rng):
    _rotate(mutate.tree_mutation(ARGS, rng))


@fuzz(200)
@given(st.sampled_from(sorted(ARGS)), st.randoms(use_true_random=False))
def test_bit_flipped_rotate_fields(field, rng):
    _rotate({**ARGS, field: mutate.bytes_mutation(ARGS[field], rng)})


@fuzz(300)
@given(st.sampled_from(sorted(REPLY)), st.randoms(use_true_random=False), st.booleans())
def test_mutated_rotate_replies(field, rng, structural):
    if structural:
        _accept(mutate.tree_mutation(REPLY, rng))
    else:
        _accept({**REPLY, field: mutate.bytes_mutation(REPLY[field], rng, pool=list(REPLY.values()))})


@fuzz(200)
@given(st.randoms(use_true_random=False))
def test_mutated_journals(tmp_path_factory, rng):
    path = tmp_path_factory.mktemp("journal") / "rotation.json"
    good = json.loads(RotationJournal(old_public=CURRENT.peer_public, identity=NEW, transport=NEW_CURVE,
                                      certificate=REPLY["certificate"], revocation=REPLY["revocation"]).to_bytes())
    path.write_text(json.dumps(mutate.tree_mutation(good, rng), default=repr))  # odd values as text
    os.chmod(path, 0o600)
    try:
        RotationJournal.load(path)
    except IdentityError:
        pass
