"""Revocations: the signed record (ordered checks), the bounded list and its file, and
what the certificate verifier and the envelope checks do with them. Pure: no sockets."""

import msgpack
import pytest

from mesh.config import RpcConfig
from mesh.errors import CertificateError, EnvelopeRejected, IdentityError
from mesh.identity.certificate import DOMAIN as CERT_DOMAIN
from mesh.identity.certificate import CertReason, sign_certificate
from mesh.identity.credentials import CertificateVerifier, MeshKeys
from mesh.identity.keys import Identity
from mesh.identity.revocation import (
    DOMAIN,
    MAX_REVOCATION_BYTES,
    Revocation,
    RevocationList,
    RevReason,
    load_revocations,
    save_revocations,
    sign_revocation,
    verify_revocation,
)
from mesh.rpc.codec import FrameCodec
from mesh.rpc.envelope import RejectReason

NOW = 1_800_000_000
DAY = 24 * 3600


def cert(authority, peer, *, issued_at=NOW - DAY, ttl=30 * DAY, serial=b"s" * 16, name="laptop"):
    return sign_certificate(authority, peer_public_raw=peer.public_raw, name=name, issued_at=issued_at,
                            expires_at=issued_at + ttl, serial=serial)


def revoke(authority, peer, *, at=NOW, until=NOW + 30 * DAY, serial=b"s" * 16, name="laptop"):
    return sign_revocation(authority, peer_public_raw=peer.public_raw, revoked_at=at, until=until,
                           serial=serial, name=name)


def reason(exc_info):
    return exc_info.value.reason


def test_sign_and_verify_round_trip():
    authority, peer = Identity.generate(), Identity.generate()
    rev = revoke(authority, peer)
    got = verify_revocation(rev.to_bytes(), authority_public_raw=authority.public_raw, now=NOW)
    assert got == rev and got.peer_id == peer.peer_id and got.name == "laptop" and got.serial == b"s" * 16
    assert len(rev.to_bytes()) < 300
    # the serial and name are optional
    bare = sign_revocation(authority, peer_public_raw=peer.public_raw, revoked_at=NOW, until=NOW + 1)
    assert verify_revocation(bare.to_bytes(), authority_public_raw=authority.public_raw, now=NOW).serial == b""


def test_checks_in_order():
    authority, other, peer = Identity.generate(), Identity.generate(), Identity.generate()
    good = revoke(authority, peer).to_bytes()
    ok = {"authority_public_raw": authority.public_raw, "now": NOW}
    with pytest.raises(CertificateError) as e:
        verify_revocation(b"x" * (MAX_REVOCATION_BYTES + 1), **ok)
    assert reason(e) is RevReason.OVERSIZE
    with pytest.raises(CertificateError) as e:
        verify_revocation(b"\xc1" * 80, **ok)
    assert reason(e) is RevReason.MALFORMED
    with pytest.raises(CertificateError) as e:
        verify_revocation("text", **ok)
    assert reason(e) is RevReason.MALFORMED
    # another mesh's revocation: told apart from a forgery before the signature is checked
    with pytest.raises(CertificateError) as e:
        verify_revocation(revoke(other, peer).to_bytes(), **ok)
    assert reason(e) is RevReason.OTHER_MESH
    # one flipped bit in the payload, or a signature by someone else
    tampered = bytearray(good)
    tampered[-70] ^= 1
    with pytest.raises(CertificateError) as e:
        verify_revocation(bytes(tampered), **ok)
    assert reason(e) in (RevReason.BAD_SIGNATURE, RevReason.MALFORMED)
    with pytest.raises(CertificateError) as e:
        verify_revocation(good[:-64] + other.sign(DOMAIN + good[:-64]), **ok)
    assert reason(e) is RevReason.BAD_SIGNATURE
    # expired: everything it named has expired
    with pytest.raises(CertificateError) as e:
        verify_revocation(good, authority_public_raw=authority.public_raw, now=NOW + 31 * DAY)
    assert reason(e) is RevReason.EXPIRED


def test_a_certificate_signature_is_not_a_revocation_signature():
    """The domains differ: the authority's signature over a certificate payload never
    verifies as a revocation, even with a payload shaped like one."""
    authority, peer = Identity.generate(), Identity.generate()
    rev = revoke(authority, peer)
    forged = rev.payload + authority.sign(CERT_DOMAIN + rev.payload)
    with pytest.raises(CertificateError) as e:
        verify_revocation(forged, authority_public_raw=authority.public_raw, now=NOW)
    assert reason(e) is RevReason.BAD_SIGNATURE


def test_structure_and_versions():
    authority, peer = Identity.generate(), Identity.generate()
    from mesh.identity.certificate import mesh_id_for

    base = {"v": 1, "m": mesh_id_for(authority.public_raw), "k": peer.public_raw, "s": b"", "n": "", "t": NOW,
            "u": NOW + 10}

    def signed(doc):
        payload = msgpack.packb(doc, use_bin_type=True)
        return payload + authority.sign(DOMAIN + payload)

    assert Revocation.from_bytes(signed({**base, "future": [1, 2]})).until == NOW + 10  # appended keys tolerated
    for bad, why in [
        ({**base, "v": 2}, RevReason.BAD_VERSION),
        ({**base, "v": True}, RevReason.MALFORMED),
        ({**base, "k": b"short"}, RevReason.MALFORMED),
        ({**base, "s": b"x" * 5}, RevReason.MALFORMED),
        ({**base, "n": "a\nb"}, RevReason.MALFORMED),
        ({**base, "u": NOW}, RevReason.MALFORMED),
        ({**base, "t": -1}, RevReason.MALFORMED),
    ]:
        with pytest.raises(CertificateError) as e:
            Revocation.from_bytes(signed(bad))
        assert reason(e) is why, bad
    with pytest.raises(CertificateError):
        Revocation.from_bytes(msgpack.packb([1, 2]) + b"\0" * 64)


def test_what_a_revocation_refuses():
    authority, peer, other = Identity.generate(), Identity.generate(), Identity.generate()
    rev = revoke(authority, peer, at=NOW)
    assert rev.revokes(cert(authority, peer, issued_at=NOW - DAY))
    assert rev.revokes(cert(authority, peer, issued_at=NOW, serial=b"r" * 16))  # a renewal just before
    assert not rev.revokes(cert(authority, peer, issued_at=NOW + 1))  # re-enrolled later, on purpose
    assert not rev.revokes(cert(authority, other))


def test_list_keeps_the_latest_per_key_bounds_itself_and_prunes():
    authority = Identity.generate()
    peers = [Identity.generate() for _ in range(5)]
    lst = RevocationList(authority.public_raw, max_entries=3)
    empty = lst.digest()
    r0 = revoke(authority, peers[0], until=NOW + 10 * DAY)
    assert lst.add(r0.to_bytes(), now=NOW) == r0
    assert lst.add(r0.to_bytes(), now=NOW) is None  # a duplicate is not news
    older = revoke(authority, peers[0], at=NOW - 5, until=NOW + 10 * DAY)
    assert lst.add(older.to_bytes(), now=NOW) is None  # covered by the later one
    newer = revoke(authority, peers[0], at=NOW + 5, until=NOW + 10 * DAY)
    assert lst.add(newer.to_bytes(), now=NOW) == newer and len(lst) == 1
    assert lst.digest() != empty
    with pytest.raises(CertificateError):
        lst.add(revoke(Identity.generate(), peers[1]).to_bytes(), now=NOW)
    new, refused = lst.add_many(
        [revoke(authority, peers[1], until=NOW + 20 * DAY).to_bytes(), b"junk",
         revoke(authority, peers[2], until=NOW + 2 * DAY).to_bytes()], now=NOW)
    assert len(new) == 2 and refused == 1 and lst.full
    # past the cap the one that expires soonest goes
    lst.add(revoke(authority, peers[3], until=NOW + 30 * DAY).to_bytes(), now=NOW)
    assert len(lst) == 3 and lst.evictions == 1
    assert peers[2].peer_id not in lst.revoked_peer_ids() and not lst.revokes_peer(peers[2].peer_id)
    assert lst.revokes_peer(peers[3].peer_id) and lst.revokes_peer(peers[0].peer_id)
    # an entry that would be evicted at once is not news
    assert lst.add(revoke(authority, peers[4], until=NOW + DAY).to_bytes(), now=NOW) is None
    # pruning drops what has expired (past until + skew)
    assert lst.prune(now=NOW + 15 * DAY) == 1
    assert peers[0].peer_id not in lst.revoked_peer_ids() and len(lst) == 2
    assert [p for p in peers if lst.revokes_peer(p.peer_id)] == [p for p in peers if p.peer_id in {r.peer_id for r in lst}]
    assert not lst.revokes_peer(peers[0].peer_id) and not lst.revokes_peer(peers[4].peer_id)
    # equal lists, equal digests, whatever the order they were learned in
    other = RevocationList(authority.public_raw)
    other.add_many(list(reversed(lst.to_wire())), now=NOW)
    assert other.digest() == lst.digest()


def test_list_file_round_trip_and_refuses_junk(tmp_path):
    authority, peer = Identity.generate(), Identity.generate()
    lst = RevocationList(authority.public_raw)
    lst.add(revoke(authority, peer).to_bytes(), now=NOW)
    path = tmp_path / "revocations.json"
    save_revocations(path, lst)
    assert path.stat().st_mode & 0o777 == 0o600
    again = RevocationList(authority.public_raw)
    assert load_revocations(path, again, now=NOW) == 0
    assert again.digest() == lst.digest()
    # expired entries are dropped on load, counted as refused
    later = RevocationList(authority.public_raw)
    assert load_revocations(path, later, now=NOW + 40 * DAY) == 1 and len(later) == 0
    assert load_revocations(tmp_path / "missing.json", RevocationList(authority.public_raw), now=NOW) == 0
    path.write_text("not json")
    with pytest.raises(IdentityError):
        load_revocations(path, RevocationList(authority.public_raw), now=NOW)


def test_the_verifier_refuses_a_revoked_certificate_also_from_its_cache():
    authority, peer, other = Identity.generate(), Identity.generate(), Identity.generate()
    lst = RevocationList(authority.public_raw)
    verifier = CertificateVerifier(authority.public_raw, revocations=lst)
    c, c_other = cert(authority, peer), cert(authority, other)
    verifier.verify(c.to_bytes(), now=NOW)
    verifier.verify(c_other.to_bytes(), now=NOW)
    keys = MeshKeys(Identity.generate().public_raw, certificates=verifier)
    assert keys.key_for(peer.peer_id) is not None
    rev = lst.add(revoke(authority, peer).to_bytes(), now=NOW)
    # even before ``revoke`` drops it, the list is consulted on every answer
    assert keys.key_for(peer.peer_id) is None
    with pytest.raises(CertificateError) as e:
        verifier.verify(c.to_bytes(), now=NOW)  # a cache hit
    assert e.value.reason is CertReason.REVOKED
    verifier.revoke(rev)
    with pytest.raises(CertificateError) as e:
        verifier.verify(c.to_bytes(), now=NOW)  # verified from scratch
    assert e.value.reason is CertReason.REVOKED
    assert verifier.certificate_for(peer.peer_id) is None
    assert keys.key_for(other.peer_id) is not None  # others are untouched
    # a certificate issued for the same key after the revocation (a new join token) is honoured
    fresh = cert(authority, peer, issued_at=NOW + 10, serial=b"n" * 16)
    assert verifier.verify(fresh.to_bytes(), now=NOW + 20).peer_id == peer.peer_id


def test_envelope_counts_a_revoked_sender_as_revoked():
    authority, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    lst = RevocationList(authority.public_raw)
    verifier = CertificateVerifier(authority.public_raw, revocations=lst)
    keys = MeshKeys(b.public_raw, certificates=verifier)
    clock = lambda: float(NOW)  # noqa: E731
    cfg = RpcConfig.for_tests()
    sender = FrameCodec(a, keys, config=cfg, clock=clock, credential=cert(authority, a).to_bytes())
    receiver = FrameCodec(b, keys, config=cfg, clock=clock, credentials=verifier.certified_peer)
    frame = sender.seal("cast", {"m": "gossip", "a": {}})
    receiver.open(frame, sender.credential)
    verifier.revoke(lst.add(revoke(authority, a).to_bytes(), now=NOW))
    with pytest.raises(EnvelopeRejected) as e:
        receiver.open(sender.seal("cast", {"m": "gossip", "a": {}}), sender.credential)
    assert e.value.reason is RejectReason.REVOKED
    assert receiver.rejections.snapshot()["revoked"] == 1


def test_revoke_resolves_an_exact_name_before_an_id_prefix(tmp_path):
    """Peer ids are base32: a member may be named what another's id begins with. The
    name is meant (revoking the other one by mistake would be worse than ambiguity)."""
    from types import SimpleNamespace

    from mesh.identity.revocation_service import RevocationService

    authority, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    named = a.peer_id_text[:6]
    certs = {a.peer_id: cert(authority, a, name="desk"), b.peer_id: cert(authority, b, name=named)}

    def record(peer, name):
        return SimpleNamespace(is_self=False, peer_id=peer.peer_id, name=name, credential=certs[peer.peer_id].to_bytes())

    swim = SimpleNamespace(members=lambda: [record(a, "desk"), record(b, named)],
                           own_record=SimpleNamespace(name="self"))
    membership = SimpleNamespace(swim=swim, listeners=[], revoked=set())
    service = RevocationService(
        revocations=RevocationList(authority.public_raw), path=tmp_path / "revocations.json", verifier=None,
        membership=membership, authority_key=tmp_path / "authority.key", self_id=b"\0" * 16,
        is_local=lambda _: False, interval_s=10,
    )
    assert service._resolve(named).peer_id == b.peer_id  # the name, not a's id prefix
    assert service._resolve(a.peer_id_text[:8]).peer_id == a.peer_id  # a longer prefix is a's alone
    assert service._resolve("desk").peer_id == a.peer_id
