"""The pure plan of which layers go to which ggml RPC lender (mesh.inference.split_plan).

llama.cpp's rule it is written in: n_gpu_layers = k puts the last k of n_layers + 1
slots (the repeating layers, then the output head) on the devices, shared in order by
tensor_split."""

import pytest

from mesh.inference.split_plan import Offer, plan_layers

MIB = 1 << 20


def test_one_lender_with_room_takes_every_slot_the_output_head_included():
    plan = plan_layers(30, 10 * MIB, [Offer("127.0.0.1:1", 1000 * MIB)])
    assert plan.remote_layers == 31 and plan.local_layers == 0
    assert plan.endpoints == ("127.0.0.1:1",) and plan.counts == (31,)
    assert plan.output_owner == "127.0.0.1:1"
    assert plan_layers(30, 1, [Offer("a", 10**9)], max_remote=99).remote_layers == 31


def test_the_remote_block_is_the_last_slots_as_llama_cpp_places_n_gpu_layers():
    plan = plan_layers(10, 1, [Offer("a", 2), Offer("b", 5)])
    # "b" offers most: it holds the output head (1 of its 5) and comes last
    assert plan.owners == (None,) * 4 + ("a",) * 2 + ("b",) * 4
    assert plan.output_owner == "b" and plan.counts == (2, 5) and plan.remote_layers == 7
    one = plan_layers(10, 1, [Offer("a", 100)], max_remote=1)
    assert one.owners == (None,) * 10 and one.output_owner == "a"  # k = 1: the output head only


def test_layers_follow_offered_memory_in_proportion():
    plan = plan_layers(30, 1 * MIB, [Offer("a", 100 * MIB), Offer("b", 200 * MIB)], max_remote=16)
    assert plan.counts == (5, 11)  # 15 layers 5 / 10, and the output head on "b"
    assert plan.tensor_split() == (5.0, 11.0)
    plan = plan_layers(30, 1 * MIB, [Offer("a", 300 * MIB), Offer("b", 100 * MIB)])
    assert plan.endpoints == ("b", "a") and plan.counts == (8, 23)  # 7.5 / 22.5: the tie to the earlier
    assert plan.local_layers == 0


def test_a_lender_never_gets_more_than_fits_in_its_offer_and_the_rest_goes_elsewhere():
    plan = plan_layers(30, 10 * MIB, [Offer("a", 1000 * MIB), Offer("b", 50 * MIB)])
    assert plan.endpoints == ("b", "a") and plan.counts == (1, 30)
    # 10 layers fit beside the output head: 8.4 / 1.6 would round to 8 / 2, but "b" holds 1
    plan = plan_layers(12, 10, [Offer("a", 100), Offer("b", 19)])
    assert plan.counts == (1, 10) and plan.local_layers == 2
    plan = plan_layers(30, 10 * MIB, [Offer("a", 55 * MIB), Offer("b", 95 * MIB)])
    assert plan.counts == (5, 9) and plan.local_layers == 17  # all they can hold, the rest local


def test_the_output_head_needs_room_of_its_own():
    plan = plan_layers(30, 2 * MIB, [Offer("a", 40 * MIB)], output_bytes=27 * MIB)
    assert plan.counts == (7,) and plan.local_layers == 24  # 13 MiB left for 6 layers, and the head
    # no lender can hold the head: nothing can go remote (any n_gpu_layers >= 1 includes it)
    none = plan_layers(30, 2 * MIB, [Offer("a", 20 * MIB)], output_bytes=27 * MIB)
    assert none.remote_layers == 0 and none.output_owner is None and none.owners == (None,) * 30


def test_lenders_without_memory_are_left_out_and_nothing_remote_is_a_valid_plan():
    plan = plan_layers(30, 10 * MIB, [Offer("a", 5 * MIB), Offer("b", 0), Offer("c", 50 * MIB)])
    assert plan.endpoints == ("c",) and plan.counts == (5,)
    assert plan_layers(30, 10 * MIB, []).remote_layers == 0
    assert plan_layers(30, 10 * MIB, [Offer("a", 10**12)], max_remote=0).owners == (None,) * 30


@pytest.mark.parametrize("n", [1, 7, 30, 64])
@pytest.mark.parametrize("offers", [(1, 1), (3, 1, 2), (10, 0, 7, 5)])
def test_counts_always_add_up_and_respect_caps(n, offers):
    layer = 3
    plan = plan_layers(n, layer, [Offer(str(i), b * layer * 4) for i, b in enumerate(offers)])
    caps = {str(i): b * 4 for i, b in enumerate(offers)}
    assert plan.remote_layers == min(n + 1, sum(caps.values()))
    for ep, c in zip(plan.endpoints, plan.counts, strict=True):
        assert 0 < c <= caps[ep]
    slots = [o for o in plan.owners if o is not None] + [plan.output_owner]
    assert slots == [e for e, c in zip(plan.endpoints, plan.counts, strict=True) for _ in range(c)]
    assert len(plan.owners) == n


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        plan_layers(30, 0, [])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [Offer("a", 1), Offer("a", 2)])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [Offer("a", -1)])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [], max_remote=-1)
