"""Certificates: the codec, the ordered checks, the verifying cache and the mesh key resolver."""

import msgpack
import pytest

from mesh.errors import CertificateError, IdentityError
from mesh.identity.certificate import (
    DEFAULT_SKEW_S,
    DOMAIN,
    MAX_CERT_BYTES,
    Certificate,
    CertReason,
    mesh_id_for,
    sign_certificate,
    verify_certificate,
)
from mesh.identity.credentials import CertificateVerifier, MeshKeys
from mesh.identity.keys import Identity, peer_id_from_public
from mesh.identity.trust import StaticKeys

NOW = 1_800_000_000
DAY = 24 * 3600


def make_cert(authority, peer=None, *, name="laptop", issued_at=NOW, ttl=30 * DAY, curve=b"", serial=b"s" * 16):
    peer = peer or Identity.generate()
    return sign_certificate(
        authority,
        peer_public_raw=peer.public_raw,
        name=name,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        serial=serial,
        curve_public=curve,
    )


def signed(authority: Identity, doc) -> bytes:
    """A payload of our choosing, correctly signed: reaches the type checks, not the signature check."""
    payload = msgpack.packb(doc, use_bin_type=True)
    return payload + authority.sign(DOMAIN + payload)


def good_doc(authority: Identity, **changes):
    doc = {
        "v": 1,
        "m": mesh_id_for(authority.public_raw),
        "a": authority.public_raw,
        "k": Identity.generate().public_raw,
        "n": "laptop",
        "iat": NOW,
        "exp": NOW + DAY,
        "s": b"s" * 16,
        "c": b"",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def reason(excinfo) -> CertReason:
    return excinfo.value.reason


def test_round_trip_and_derived_fields():
    authority, peer = Identity.generate(), Identity.generate()
    cert = make_cert(authority, peer, curve=b"c" * 32)
    data = cert.to_bytes()
    assert len(data) < 300
    back = verify_certificate(data, authority_public_raw=authority.public_raw, now=NOW + 5)
    assert back == cert and back.to_bytes() == data
    assert back.peer_id == peer.peer_id == peer_id_from_public(peer.public_raw)
    assert back.peer_id_text == peer.peer_id_text
    assert back.mesh_id == mesh_id_for(authority.public_raw) and len(back.mesh_id) == 16
    assert (back.name, back.issued_at, back.expires_at, back.curve_public) == ("laptop", NOW, NOW + 30 * DAY, b"c" * 32)


def test_mesh_id_depends_on_the_authority_key():
    a, b = Identity.generate(), Identity.generate()
    assert mesh_id_for(a.public_raw) != mesh_id_for(b.public_raw)
    assert mesh_id_for(a.public_raw) != a.peer_id  # domain-separated from peer ids


def test_every_tampered_byte_is_refused():
    authority = Identity.generate()
    data = make_cert(authority).to_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(CertificateError):
            verify_certificate(bytes(bad), authority_public_raw=authority.public_raw, now=NOW)


def test_tampered_field_with_valid_structure_is_a_bad_signature():
    authority = Identity.generate()
    cert = make_cert(authority, name="laptop")
    forged = cert.payload.replace(b"laptop", b"laptoq") + cert.signature
    with pytest.raises(CertificateError) as e:
        verify_certificate(forged, authority_public_raw=authority.public_raw, now=NOW)
    assert reason(e) is CertReason.BAD_SIGNATURE


def test_certificate_of_another_mesh_is_told_apart_from_a_forgery():
    ours, theirs = Identity.generate(), Identity.generate()
    data = make_cert(theirs).to_bytes()
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=ours.public_raw, now=NOW)
    assert reason(e) is CertReason.OTHER_MESH and "other_mesh" in str(e.value)


def test_claiming_our_authority_without_its_key_is_a_bad_signature():
    ours, forger = Identity.generate(), Identity.generate()
    data = signed(forger, good_doc(ours))  # names our authority and mesh, signed by someone else
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=ours.public_raw, now=NOW)
    assert reason(e) is CertReason.BAD_SIGNATURE


def test_mesh_id_or_authority_field_that_does_not_match_is_refused_even_when_signed():
    authority, other = Identity.generate(), Identity.generate()
    for doc in (good_doc(authority, m=b"\0" * 16), good_doc(authority, a=other.public_raw)):
        with pytest.raises(CertificateError) as e:
            verify_certificate(signed(authority, doc), authority_public_raw=authority.public_raw, now=NOW)
        assert reason(e) is CertReason.OTHER_MESH


def test_validity_window_with_skew():
    authority = Identity.generate()
    data = make_cert(authority, issued_at=NOW, ttl=DAY).to_bytes()
    pub = authority.public_raw
    verify_certificate(data, authority_public_raw=pub, now=NOW - DEFAULT_SKEW_S)  # early clock, within skew
    verify_certificate(data, authority_public_raw=pub, now=NOW + DAY + DEFAULT_SKEW_S - 1)
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=pub, now=NOW - DEFAULT_SKEW_S - 1)
    assert reason(e) is CertReason.NOT_YET_VALID
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=pub, now=NOW + DAY + DEFAULT_SKEW_S)
    assert reason(e) is CertReason.EXPIRED
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=pub, now=NOW + DAY, skew_s=0)
    assert reason(e) is CertReason.EXPIRED


def test_checks_run_in_order():
    # expired AND of another mesh: the mesh is reported (it is checked first)
    ours, theirs = Identity.generate(), Identity.generate()
    data = make_cert(theirs, issued_at=NOW - 100 * DAY, ttl=DAY).to_bytes()
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=ours.public_raw, now=NOW)
    assert reason(e) is CertReason.OTHER_MESH
    # forged AND expired: the signature is reported before the time
    forged = bytearray(make_cert(ours, issued_at=NOW - 100 * DAY, ttl=DAY).to_bytes())
    forged[-1] ^= 1
    with pytest.raises(CertificateError) as e:
        verify_certificate(bytes(forged), authority_public_raw=ours.public_raw, now=NOW)
    assert reason(e) is CertReason.BAD_SIGNATURE


def test_oversize_is_refused_before_parsing():
    authority = Identity.generate()
    data = make_cert(authority).to_bytes()
    with pytest.raises(CertificateError) as e:
        verify_certificate(data + b"\0" * MAX_CERT_BYTES, authority_public_raw=authority.public_raw, now=NOW)
    assert reason(e) is CertReason.OVERSIZE
    # a msgpack header claiming a 4 GB string is not believed
    with pytest.raises(CertificateError) as e:
        Certificate.from_bytes(b"\xdb\xff\xff\xff\xff" + b"x" * 100)
    assert reason(e) is CertReason.MALFORMED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 64,
        b"\x00" * 65,
        b"garbage" * 20,
        b"\xc1" + b"\0" * 64,
        msgpack.packb([1, 2]) + b"\0" * 64,
        "text",
    ],
)
def test_garbage_is_malformed_not_a_crash(data):
    with pytest.raises(CertificateError) as e:
        Certificate.from_bytes(data)
    assert reason(e) is CertReason.MALFORMED


@pytest.mark.parametrize(
    "changes",
    [
        {"v": "1"},
        {"v": True},
        {"m": "not bytes"},
        {"a": b"short"},
        {"k": b"k" * 31},
        {"k": ...},
        {"n": ""},
        {"n": "x" * 65},
        {"n": "evil\nname"},
        {"n": b"bytes"},
        {"iat": "now"},
        {"iat": True},
        {"exp": NOW},  # not after issued_at
        {"exp": -1},
        {"s": b"s" * 15},
        {"c": b"c" * 31},
        {"c": ...},
    ],
)
def test_wrong_field_types_are_malformed_even_when_signed(changes):
    authority = Identity.generate()
    data = signed(authority, good_doc(authority, **changes))
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=authority.public_raw, now=NOW)
    assert reason(e) is CertReason.MALFORMED


def test_non_map_payload_and_unsupported_version():
    authority = Identity.generate()
    with pytest.raises(CertificateError) as e:
        verify_certificate(signed(authority, [1, 2, 3]), authority_public_raw=authority.public_raw, now=NOW)
    assert reason(e) is CertReason.MALFORMED
    with pytest.raises(CertificateError) as e:
        verify_certificate(
            signed(authority, good_doc(authority, v=2)), authority_public_raw=authority.public_raw, now=NOW
        )
    assert reason(e) is CertReason.BAD_VERSION


def test_unknown_appended_fields_are_tolerated():
    authority = Identity.generate()
    data = signed(authority, good_doc(authority, zz_future=[1, {"x": b"y"}], roles="gpu"))
    cert = verify_certificate(data, authority_public_raw=authority.public_raw, now=NOW)
    assert cert.name == "laptop" and cert.to_bytes() == data


def test_sign_refuses_bad_inputs():
    authority = Identity.generate()
    with pytest.raises(CertificateError):
        make_cert(authority, name="a\tb")
    with pytest.raises(CertificateError):
        make_cert(authority, ttl=0)
    with pytest.raises(CertificateError):
        make_cert(authority, curve=b"c" * 5)
    with pytest.raises(CertificateError):
        make_cert(authority, serial=b"short")
    long_unicode = make_cert(authority, name="é" * 64).to_bytes()  # longest name still fits the cap
    assert len(long_unicode) <= MAX_CERT_BYTES


# -- the verifying cache ------------------------------------------------------------


def test_verifier_caches_and_learns_the_key():
    authority, peer = Identity.generate(), Identity.generate()
    data = make_cert(authority, peer).to_bytes()
    v = CertificateVerifier(authority.public_raw)
    assert v.key_for(peer.peer_id) is None
    cert = v.verify(data, now=NOW)
    assert v.hits == 0 and len(v) == 1
    assert v.verify(data, now=NOW + 1) == cert and v.hits == 1
    key = v.key_for(peer.peer_id)
    assert key is not None and key.public_bytes_raw() == peer.public_raw
    assert v.certified_peer(data, NOW + 2) == peer.peer_id  # the envelope's credentials seam


def test_verifier_does_not_cache_refusals():
    ours, theirs = Identity.generate(), Identity.generate()
    v = CertificateVerifier(ours.public_raw)
    bad = make_cert(theirs).to_bytes()
    for _ in range(3):
        with pytest.raises(CertificateError):
            v.verify(bad, now=NOW)
    assert len(v) == 0 and v.peer_count == 0
    with pytest.raises(CertificateError) as e:
        v.verify(b"x" * (MAX_CERT_BYTES + 1), now=NOW)
    assert reason(e) is CertReason.OVERSIZE


def test_cache_hit_is_rechecked_for_expiry():
    authority, peer = Identity.generate(), Identity.generate()
    data = make_cert(authority, peer, ttl=DAY).to_bytes()
    v = CertificateVerifier(authority.public_raw, skew_s=0)
    v.verify(data, now=NOW)
    with pytest.raises(CertificateError) as e:
        v.verify(data, now=NOW + DAY)
    assert reason(e) is CertReason.EXPIRED
    assert len(v) == 0  # and dropped from the cache
    assert v.key_for(peer.peer_id) is None  # the clock it judges by moved past the expiry


def test_key_for_follows_the_clock_and_prune():
    authority, peer = Identity.generate(), Identity.generate()
    v = CertificateVerifier(authority.public_raw, skew_s=0)
    v.verify(make_cert(authority, peer, ttl=DAY).to_bytes(), now=NOW)
    assert v.key_for(peer.peer_id) is not None
    assert v.key_for(peer.peer_id, now=NOW + DAY) is None
    assert v.key_for(peer.peer_id) is not None  # no later reading yet
    assert v.prune(now=NOW + DAY) == 2  # one cache entry, one peer entry
    assert v.key_for(peer.peer_id) is None and len(v) == 0 and v.peer_count == 0


def test_cache_is_bounded_lru():
    authority = Identity.generate()
    v = CertificateVerifier(authority.public_raw, max_entries=3, max_peers=2)
    peers = [Identity.generate() for _ in range(5)]
    certs = [make_cert(authority, p).to_bytes() for p in peers]
    for c in certs:
        v.verify(c, now=NOW)
    assert len(v) == 3 and v.cache_evictions == 2
    assert v.peer_count == 2 and v.peer_evictions == 3
    assert v.key_for(peers[0].peer_id) is None and v.key_for(peers[4].peer_id) is not None
    hits = v.hits
    v.verify(certs[4], now=NOW)  # still cached
    assert v.hits == hits + 1
    v.verify(certs[0], now=NOW)  # evicted: verified again (and evicts the least recent, certs[2])
    assert v.hits == hits + 1 and len(v) == 3
    v.verify(certs[3], now=NOW)
    assert v.hits == hits + 2


def test_most_recent_certificate_wins_and_an_old_one_cannot_roll_it_back():
    authority, peer = Identity.generate(), Identity.generate()
    old = make_cert(authority, peer, name="old-name", issued_at=NOW - DAY).to_bytes()
    new = make_cert(authority, peer, name="new-name", issued_at=NOW).to_bytes()
    v = CertificateVerifier(authority.public_raw)
    v.verify(new, now=NOW)
    v.verify(old, now=NOW)  # replayed older certificate: valid, but not the most recent
    assert v.certificate_for(peer.peer_id).name == "new-name"
    v2 = CertificateVerifier(authority.public_raw)
    v2.verify(old, now=NOW)
    v2.verify(new, now=NOW)
    assert v2.certificate_for(peer.peer_id).name == "new-name"


def test_forget_drops_a_peer():
    authority, peer = Identity.generate(), Identity.generate()
    data = make_cert(authority, peer).to_bytes()
    v = CertificateVerifier(authority.public_raw)
    v.verify(data, now=NOW)
    v.forget(peer.peer_id)
    assert v.key_for(peer.peer_id) is None and len(v) == 0


def test_verifier_refuses_a_malformed_authority_key():
    with pytest.raises(IdentityError):
        CertificateVerifier(b"short")


def test_mesh_keys_checks_own_then_trust_then_certificates():
    own, client, member, stranger, authority = (Identity.generate() for _ in range(5))
    v = CertificateVerifier(authority.public_raw)
    keys = MeshKeys(own.public_raw, trust=StaticKeys([client.public_raw]), certificates=v)
    assert keys.key_for(own.peer_id).public_bytes_raw() == own.public_raw
    assert keys.key_for(client.peer_id).public_bytes_raw() == client.public_raw
    assert keys.key_for(member.peer_id) is None
    v.verify(make_cert(authority, member).to_bytes(), now=NOW)
    assert keys.key_for(member.peer_id).public_bytes_raw() == member.public_raw
    assert keys.key_for(stranger.peer_id) is None
    assert MeshKeys(own.public_raw).key_for(client.peer_id) is None
