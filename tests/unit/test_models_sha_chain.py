"""SHA-256 chaining values (mesh.models.sha_chain) against hashlib: a hash resumed from
the state at any 64-byte boundary ends where hashing the whole at once does."""

from __future__ import annotations

import hashlib
import random

import pytest

from mesh.models import sha_chain


def test_libcrypto_is_there_and_passes_its_self_test():
    assert sha_chain.available()  # CI machines have OpenSSL; without it pulls read twice


@pytest.mark.parametrize("seed", range(5))
def test_resuming_from_a_chaining_value_gives_hashlibs_digest(seed):
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 40_000))
    cut = rng.randrange(0, len(data) + 1) // 64 * 64
    state = sha_chain.State.initial().update(data[:cut]).chaining()
    resumed = sha_chain.State(state, cut).update(memoryview(bytearray(data))[cut:])
    assert resumed.digest() == hashlib.sha256(data).digest()


def test_check_piece_follows_the_chain_to_the_digest():
    data = random.Random(9).randbytes(64 * 300)
    mid = sha_chain.State.initial().update(data[:6400]).chaining()
    digest = hashlib.sha256(data).digest()
    assert sha_chain.check_piece(data[:6400], start=sha_chain.INITIAL, offset=0, end=mid, last=False)
    assert sha_chain.check_piece(data[6400:], start=mid, offset=6400, end=digest, last=True)
    assert not sha_chain.check_piece(data[6400:], start=mid, offset=6464, end=digest, last=True)  # wrong length
    assert not sha_chain.check_piece(data[:6400], start=mid, offset=0, end=mid, last=False)


def test_a_state_mid_block_has_no_chaining_value():
    with pytest.raises(ValueError, match="multiple of 64"):
        sha_chain.State.initial().update(b"abc").chaining()
    with pytest.raises(ValueError, match="whole number of 64-byte blocks"):
        sha_chain.State(sha_chain.INITIAL, 10)
