"""Fuzzing certificates, join tokens and enrol requests from real ones: only
``CertificateError`` / ``TokenError`` (``MeshError`` for enrolment) may come out."""

from __future__ import annotations

import base64

import msgpack
import mutate
import seeds
import targets
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from mesh.identity.certificate import SIGNATURE_BYTES
from mesh.identity.tokens import PREFIX

C = seeds.corpus()


@fuzz(300)
@given(st.sampled_from(C.certificates), st.randoms(use_true_random=False))
def test_mutated_certificates(cert, rng):
    targets.certificate(mutate.bytes_mutation(cert, rng, pool=C.certificates))


@fuzz(300)
@given(st.sampled_from(C.certificates), st.randoms(use_true_random=False), st.booleans())
def test_authority_signed_mutated_certificate_payloads(cert, rng, structural):
    payload = cert[:-SIGNATURE_BYTES]
    targets.certificate_payload(mutate.payload_mutation(payload, rng) if structural
                                else mutate.bytes_mutation(payload, rng))


def _token_raw(text: str) -> bytes:
    body = text[len(PREFIX):].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


@fuzz(150)
@given(st.sampled_from(C.tokens), st.randoms(use_true_random=False))
def test_mutated_token_text(token, rng):
    raw = mutate.bytes_mutation(token.encode(), rng)
    targets.token_text(raw.decode("utf-8", "replace"))


@fuzz(300)
@given(st.sampled_from(C.tokens), st.randoms(use_true_random=False), st.booleans())
def test_mutated_token_structure(token, rng, structural):
    raw = _token_raw(token)
    targets.token_raw(mutate.payload_mutation(raw, rng) if structural else mutate.bytes_mutation(raw, rng))


@fuzz(60)
@given(st.text(max_size=1200))
def test_arbitrary_token_text(text):
    targets.token_text(text)
    targets.token_text(PREFIX + text)


@fuzz(150)
@given(st.randoms(use_true_random=False), st.booleans())
def test_mutated_enrol_requests(rng, signed_by_joiner):
    args = msgpack.unpackb(mutate.payload_mutation(msgpack.packb(targets.enrolment().seed_args), rng),
                           raw=False, strict_map_key=False)
    targets.enrol(args, sender=seeds.STRANGER.peer_id if signed_by_joiner else None)
