"""Fuzzing the RPC envelope decoder (``FrameCodec.open`` -> ``envelope.decode``) and the
body/args parsers behind it, from real sealed frames: only ``EnvelopeRejected`` (or the
args validators' ``InvalidRequest``) may come out."""

from __future__ import annotations

import mutate
import seeds
import targets
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

C = seeds.corpus()


@fuzz(500)
@given(st.sampled_from(C.frames), st.randoms(use_true_random=False), st.booleans())
def test_mutated_frames_are_refused_with_a_reason(frame, rng, with_credential):
    targets.envelope_frame(mutate.bytes_mutation(frame, rng, pool=C.all_bytes),
                           C.credentials[0] if with_credential else None)


@fuzz(500)
@given(st.sampled_from(C.payloads), st.randoms(use_true_random=False), st.booleans())
def test_signed_mutated_payloads_from_a_trusted_sender(payload, rng, structural):
    # A hostile but enrolled member: the signature verifies, every later check runs.
    mutated = mutate.payload_mutation(payload, rng) if structural else mutate.bytes_mutation(payload, rng)
    targets.envelope_payload(mutated)


@fuzz(150)
@given(st.sampled_from(C.stranger_frames), st.sampled_from(C.credentials), st.randoms(use_true_random=False))
def test_mutated_credentials_beside_a_strangers_frame(frame, credential, rng):
    targets.envelope_frame(frame, mutate.bytes_mutation(credential, rng, pool=C.certificates))


@fuzz(100)
@given(st.binary(max_size=600), st.one_of(st.none(), st.binary(max_size=300)))
def test_arbitrary_bytes(frame, credential):
    targets.envelope_frame(frame, credential)
    targets.envelope_payload(frame)
