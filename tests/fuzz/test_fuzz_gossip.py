"""Fuzzing the gossip codec and ``Swim.receive`` from real SWIM traffic (captured from a
simulated mesh): the codec refuses with ``GossipError`` only, ``receive`` never raises
and counts every refusal."""

from __future__ import annotations

import mutate
import seeds
import targets
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

C = seeds.corpus()


@fuzz(500)
@given(st.sampled_from(C.gossip), st.randoms(use_true_random=False))
def test_mutated_datagrams(data, rng):
    targets.gossip_datagram(mutate.bytes_mutation(data, rng, pool=C.gossip))


@fuzz(500)
@given(st.sampled_from(C.gossip), st.randoms(use_true_random=False))
def test_structurally_mutated_datagrams(data, rng):
    targets.gossip_datagram(mutate.payload_mutation(data, rng))


@fuzz(150)
@given(st.sampled_from(C.records), st.randoms(use_true_random=False), st.booleans())
def test_mutated_member_records(data, rng, structural):
    targets.member_record(mutate.payload_mutation(data, rng) if structural else mutate.bytes_mutation(data, rng))


@fuzz(80)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    targets.gossip_datagram(data)
    targets.member_record(data)
