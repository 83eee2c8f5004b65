"""Fuzzing revocation records from real ones (signed by the authority, and by another
mesh's): only ``CertificateError`` may come out of ``verify_revocation`` and of the
bounded list that holds them, and what is admitted round-trips byte for byte."""

from __future__ import annotations

import mutate
import seeds
from fuzzsettings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import CertificateError
from mesh.identity.certificate import SIGNATURE_BYTES
from mesh.identity.revocation import DOMAIN, RevocationList, sign_revocation, verify_revocation


def _real() -> list[bytes]:
    out = []
    for authority, name, serial in ((seeds.AUTHORITY, "lost-laptop", b"\x01" * 16),
                                    (seeds.AUTHORITY, "", b""),
                                    (seeds.OTHER_AUTHORITY, "theirs", b"\x02" * 16)):
        out.append(sign_revocation(authority, peer_public_raw=seeds.SENDER.public_raw, revoked_at=int(seeds.NOW) - 60,
                                   until=int(seeds.NOW) + 86400, serial=serial, name=name).to_bytes())
    return out


REAL = _real()


def _admit(data: bytes) -> None:
    try:
        rev = verify_revocation(data, authority_public_raw=seeds.AUTHORITY.public_raw, now=seeds.NOW)
    except CertificateError:
        rev = None
    if rev is not None:
        assert rev.to_bytes() == bytes(data)
    held = RevocationList(seeds.AUTHORITY.public_raw, max_entries=2)
    new, refused = held.add_many([data, *REAL], now=seeds.NOW)  # never raises; counts refusals
    assert refused >= 1 and len(held) <= 2


@fuzz(300)
@given(st.sampled_from(REAL), st.randoms(use_true_random=False))
def test_mutated_revocations(data, rng):
    _admit(mutate.bytes_mutation(data, rng, pool=REAL))


@fuzz(300)
@given(st.sampled_from(REAL[:2]), st.randoms(use_true_random=False), st.booleans())
def test_authority_signed_mutated_revocation_payloads(data, rng, structural):
    payload = data[:-SIGNATURE_BYTES]
    payload = mutate.payload_mutation(payload, rng) if structural else mutate.bytes_mutation(payload, rng)
    _admit(payload + seeds.AUTHORITY.sign(DOMAIN + payload))  # the checks after the signature run


@fuzz(100)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    _admit(data)
