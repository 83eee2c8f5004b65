"""The pure plan of which layers go to which ggml RPC lender (mesh.inference.split_plan)."""

import pytest

from mesh.inference.split_plan import Offer, plan_layers

MIB = 1 << 20


def test_one_lender_with_room_takes_every_repeating_layer_and_the_output_stays_local():
    plan = plan_layers(30, 10 * MIB, [Offer("127.0.0.1:1", 1000 * MIB)])
    assert plan.remote_layers == 30 and plan.local_layers == 0
    assert plan.endpoints == ("127.0.0.1:1",) and plan.counts == (30,)
    # never more than n_layers: llama.cpp would then put the output head (the logits) remote too
    assert plan_layers(30, 1, [Offer("a", 10**9)], max_remote=99).remote_layers == 30


def test_layers_follow_offered_memory_in_proportion():
    plan = plan_layers(30, 1 * MIB, [Offer("a", 100 * MIB), Offer("b", 200 * MIB)], max_remote=15)
    assert plan.counts == (5, 10)
    assert plan.tensor_split() == (5.0, 10.0)
    plan = plan_layers(30, 1 * MIB, [Offer("a", 100 * MIB), Offer("b", 300 * MIB)])
    assert plan.counts == (8, 22)  # 7.5 / 22.5: the tie goes to the earlier lender
    assert sum(plan.counts) == 30


def test_a_lender_never_gets_more_than_fits_in_its_offer_and_the_rest_goes_elsewhere():
    plan = plan_layers(30, 10 * MIB, [Offer("a", 1000 * MIB), Offer("b", 50 * MIB)])
    assert plan.counts == (29, 1)
    plan = plan_layers(30, 10 * MIB, [Offer("a", 1000 * MIB), Offer("b", 1000 * MIB), Offer("c", 20 * MIB)])
    assert plan.endpoints == ("a", "b") and plan.counts == (15, 15)  # c's share rounds to 0: left out
    # rounding would give "b" one more than it holds: the plan gives it to "a" instead
    # (11 layers fit: 9.24 / 1.76 would round to 9 / 2, but "b" holds 1)
    plan = plan_layers(12, 10, [Offer("a", 100), Offer("b", 19)])
    assert plan.counts == (10, 1) and plan.local_layers == 1
    plan = plan_layers(30, 10 * MIB, [Offer("a", 55 * MIB), Offer("b", 95 * MIB)])
    assert plan.counts == (5, 9) and plan.local_layers == 16  # all they can hold, the rest local


def test_the_remote_block_is_the_last_layers_as_llama_cpp_places_n_gpu_layers():
    plan = plan_layers(10, 1, [Offer("a", 2), Offer("b", 4)])
    assert plan.owners == (None,) * 4 + ("a",) * 2 + ("b",) * 4
    assert len(plan.owners) == plan.n_layers


def test_lenders_without_memory_are_left_out_and_nothing_remote_is_a_valid_plan():
    plan = plan_layers(30, 10 * MIB, [Offer("a", 5 * MIB), Offer("b", 0), Offer("c", 40 * MIB)])
    assert plan.endpoints == ("c",) and plan.counts == (4,)
    assert plan_layers(30, 10 * MIB, []).remote_layers == 0
    assert plan_layers(30, 10 * MIB, [Offer("a", 10**12)], max_remote=0).owners == (None,) * 30


@pytest.mark.parametrize("n", [1, 7, 30, 64])
@pytest.mark.parametrize("offers", [(1, 1), (3, 1, 2), (10, 0, 7, 5)])
def test_counts_always_add_up_and_respect_caps(n, offers):
    layer = 3
    plan = plan_layers(n, layer, [Offer(str(i), b * layer * 4) for i, b in enumerate(offers)])
    caps = {str(i): b * 4 for i, b in enumerate(offers)}
    assert plan.remote_layers == min(n, sum(caps.values()))
    for ep, c in zip(plan.endpoints, plan.counts, strict=True):
        assert 0 < c <= caps[ep]
    assert [o for o in plan.owners if o is not None] == [e for e, c in zip(plan.endpoints, plan.counts) for _ in range(c)]


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        plan_layers(30, 0, [])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [Offer("a", 1), Offer("a", 2)])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [Offer("a", -1)])
    with pytest.raises(ValueError):
        plan_layers(30, 1, [], max_remote=-1)
