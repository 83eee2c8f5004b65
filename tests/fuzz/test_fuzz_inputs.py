"""Fuzzing what remote callers feed the higher layers: mDNS records (hint validation)
and ask / route / job args (``InvalidRequest`` only; what is accepted can be stored and
sent again)."""

from __future__ import annotations

import mutate
import seeds
import targets
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from mesh.identity.keys import peer_id_text

C = seeds.corpus()

PID = seeds.SENDER.peer_id_text
GOOD_PROPS = {b"id": PID.encode(), b"mesh": targets.MESH_FP.encode(), b"v": b"1"}
NAME = f"{PID}._mesh._tcp.local."

_txt_value = st.one_of(st.none(), st.binary(max_size=80), st.sampled_from(list(GOOD_PROPS.values())))
_txt_key = st.one_of(st.binary(max_size=12), st.sampled_from(list(GOOD_PROPS)))
_address = st.one_of(
    st.text(max_size=50), st.ip_addresses().map(str),
    st.sampled_from(["0.0.0.0", "::", "224.0.0.251", "fe80::1", "127.0.0.1", "::1", "10.0.0.5", "1.2.3.4.5"]),
)


@fuzz(500)
@given(
    name=st.one_of(st.just(NAME), st.text(max_size=80), st.just(NAME.upper()), st.just(NAME + ".")),
    base=st.booleans(),
    extra=st.dictionaries(_txt_key, _txt_value, max_size=40),
    addresses=st.lists(_address, max_size=40),
    port=st.one_of(st.integers(-5, 70000), st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3)),
)
def test_mdns_records_become_a_hint_or_a_drop_reason(name, base, extra, addresses, port):
    props = {**GOOD_PROPS, **extra} if base else extra
    targets.mdns_hint(name=name, properties=props, addresses=addresses, port=port)


@fuzz(500)
@given(st.sampled_from(C.args), st.randoms(use_true_random=False))
def test_mutated_ask_route_and_job_args(args, rng):
    targets.job_inputs(mutate.tree_mutation(args, rng))


_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
                  st.floats(), st.text(max_size=20), st.binary(max_size=20))
_msgpack_value = st.recursive(
    _leaf, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30,
)


@fuzz(300)
@given(st.dictionaries(st.sampled_from(["messages", "max_tokens", "temperature", "top_p", "seed", "route", "job",
                                        "outcomes", "key", "ask", "x"]), _msgpack_value, max_size=6))
def test_arbitrary_msgpack_args(args):
    targets.job_inputs(args)


def test_peer_id_text_is_what_hints_expect():
    assert targets.mdns_hint(name=NAME, properties=GOOD_PROPS, addresses=["10.0.0.5"], port=7411).peer_id == PID
    assert peer_id_text(seeds.SENDER.peer_id) == PID
