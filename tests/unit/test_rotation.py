"""Key rotation, the pure parts: the certificate's predecessor field, the request and its
proof, the authority's checks and log, the reply's checks, the journal and its files,
and the seams that let jobs, sessions and transport keys follow a rotated peer."""

import json
import os
from dataclasses import replace

import pytest

from mesh.errors import CertificateError, IdentityError, InvalidRequest
from mesh.gossip.view import MemberView, PeerMeta
from mesh.identity.authority import MeshAuthority
from mesh.identity.certificate import Certificate, CertReason, sign_certificate
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.keys import Identity, peer_id_text
from mesh.identity.membership import MeshMembership
from mesh.identity.rotation import (
    RotationJournal,
    RotationLog,
    accept_rotation,
    handle_rotate,
    rotation_request,
)
from mesh.identity.rotation_service import install_rotation, resume_rotation, rotate_here
from mesh.identity.transport import TransportKeys
from mesh.jobs import JobStore
from mesh.paths import DataDir
from mesh.routing.affinity import SessionAffinity
from mesh.routing.successors import Successors
from mesh.rpc.keybook import KeyBook, KeySource

NOW = 1_800_000_000
DAY = 24 * 3600


class Member:
    """A member's keys and its current certificate."""

    def __init__(self, authority: MeshAuthority, name: str = "laptop", now: float = NOW) -> None:
        self.identity, self.transport = Identity.generate(), TransportKeys.generate()
        self.cert = Certificate.from_bytes(
            authority.issue(self.identity.public_raw, name, now=now, curve_public=self.transport.public)
        )


def _request(member: Member, journal: RotationJournal) -> dict:
    return rotation_request(journal.identity, journal.transport.public, old_public=member.identity.public_raw,
                            mesh_id=member.cert.mesh_id)


def test_the_authority_certifies_the_new_keys_as_the_successor_and_revokes_the_old_key():
    authority = MeshAuthority(Identity.generate())
    member, log = Member(authority), RotationLog()
    journal = RotationJournal.begin(member.identity.public_raw)
    reply = handle_rotate(_request(member, journal), member.cert, authority=authority, log=log, now=NOW + DAY)
    cert, rev = accept_rotation(
        reply, current=member.cert, new_public=journal.identity.public_raw, new_curve=journal.transport.public,
        authority_public_raw=authority.public_raw, now=NOW + DAY,
    )
    assert cert.peer_public == journal.identity.public_raw and cert.curve_public == journal.transport.public
    assert cert.name == "laptop" and cert.predecessor == member.identity.public_raw
    assert cert.predecessor_id == member.cert.peer_id and cert.peer_id != member.cert.peer_id
    assert rev.revokes(member.cert) and not rev.revokes(cert)
    assert rev.until > member.cert.expires_at
    assert log.rotated_to(member.identity.public_raw) == journal.identity.public_raw
    # asking again with the same new keys (the answer was lost) is answered again
    again = handle_rotate(_request(member, journal), member.cert, authority=authority, log=log, now=NOW + DAY)
    assert Certificate.from_bytes(again["certificate"]).peer_public == journal.identity.public_raw


def test_the_authority_refuses_what_it_must():
    authority = MeshAuthority(Identity.generate())
    member, log = Member(authority), RotationLog()
    journal = RotationJournal.begin(member.identity.public_raw)
    good = _request(member, journal)
    with pytest.raises(CertificateError, match="join with a token"):
        handle_rotate(good, None, authority=authority, log=log, now=NOW)
    stranger = Member(MeshAuthority(Identity.generate()))
    with pytest.raises(CertificateError, match="not of this mesh"):
        handle_rotate(good, stranger.cert, authority=authority, log=log, now=NOW)
    for bad in (None, [], {}, {**good, "k": b"short"}, {**good, "c": 7}, {**good, "p": b"x" * 63}):
        with pytest.raises(InvalidRequest):
            handle_rotate(bad, member.cert, authority=authority, log=log, now=NOW)
    # the proof must be the new key's: a thief cannot get a certificate for a key it lacks
    other = Identity.generate()
    forged = {**good, "p": other.sign(b"anything" * 8)}
    with pytest.raises(InvalidRequest, match="proof"):
        handle_rotate(forged, member.cert, authority=authority, log=log, now=NOW)
    swapped = {**good, "k": other.public_raw}  # a proof made for another key
    with pytest.raises(InvalidRequest, match="proof"):
        handle_rotate(swapped, member.cert, authority=authority, log=log, now=NOW)
    same = RotationJournal(old_public=member.identity.public_raw, identity=member.identity,
                           transport=journal.transport)
    with pytest.raises(InvalidRequest, match="current one"):
        handle_rotate(_request(member, same), member.cert, authority=authority, log=log, now=NOW)
    assert len(log) == 0  # nothing refused was recorded

    # the key was rotated once; a second rotation to another key is refused, naming the first
    handle_rotate(good, member.cert, authority=authority, log=log, now=NOW)
    thief = RotationJournal.begin(member.identity.public_raw)
    first = peer_id_text(Certificate.from_bytes(
        authority.issue(journal.identity.public_raw, "x", now=NOW)).peer_id)[:12]
    with pytest.raises(CertificateError, match=f"already rotated to peer {first}.*revoke"):
        handle_rotate(_request(member, thief), member.cert, authority=authority, log=log, now=NOW)


def test_a_reply_that_certifies_anything_else_is_refused():
    authority = MeshAuthority(Identity.generate())
    member, log = Member(authority), RotationLog()
    journal = RotationJournal.begin(member.identity.public_raw)
    reply = handle_rotate(_request(member, journal), member.cert, authority=authority, log=log, now=NOW)
    check = dict(current=member.cert, new_public=journal.identity.public_raw, new_curve=journal.transport.public,
                 authority_public_raw=authority.public_raw, now=NOW)
    for bad in (None, {}, {"certificate": reply["certificate"]}, {**reply, "revocation": "text"}):
        with pytest.raises(CertificateError):
            accept_rotation(bad, **check)
    with pytest.raises(CertificateError):  # another mesh's authority
        accept_rotation(reply, **{**check, "authority_public_raw": Identity.generate().public_raw})
    with pytest.raises(CertificateError, match="something else"):
        accept_rotation(reply, **{**check, "new_curve": TransportKeys.generate().public})
    stray = Member(authority, name="other")
    other_reply = handle_rotate(_request(stray, RotationJournal.begin(stray.identity.public_raw)), stray.cert,
                                authority=authority, log=log, now=NOW)
    with pytest.raises(CertificateError, match="does not revoke"):
        accept_rotation({**reply, "revocation": other_reply["revocation"]}, **check)


def test_the_predecessor_field_is_optional_checked_and_signed():
    authority = MeshAuthority(Identity.generate())
    plain = Member(authority).cert
    assert plain.predecessor == b"" and plain.predecessor_id is None  # older certificates read the same
    peer = Identity.generate()
    with pytest.raises(CertificateError):
        sign_certificate(authority.identity, peer_public_raw=peer.public_raw, name="x", issued_at=NOW,
                         expires_at=NOW + 1, serial=b"s" * 16, predecessor=peer.public_raw)
    with pytest.raises(CertificateError):
        sign_certificate(authority.identity, peer_public_raw=peer.public_raw, name="x", issued_at=NOW,
                         expires_at=NOW + 1, serial=b"s" * 16, predecessor=b"short")
    # a forged predecessor does not survive the signature check
    cert = Certificate.from_bytes(authority.issue(peer.public_raw, "x", now=NOW, predecessor=b"\1" * 32))
    tampered = cert.payload.replace(b"\1" * 32, b"\2" * 32) + cert.signature
    verifier = CertificateVerifier(authority.public_raw)
    with pytest.raises(CertificateError) as e:
        verifier.verify(tampered, now=NOW)
    assert e.value.reason is CertReason.BAD_SIGNATURE


def test_the_verifier_tells_of_each_new_successor_once():
    authority = MeshAuthority(Identity.generate())
    member = Member(authority)
    journal = RotationJournal.begin(member.identity.public_raw)
    reply = handle_rotate(_request(member, journal), member.cert, authority=authority, log=RotationLog(), now=NOW)
    seen = []
    verifier = CertificateVerifier(authority.public_raw)
    verifier.on_successor = seen.append
    verifier.verify(member.cert.to_bytes(), now=NOW)
    for _ in range(3):
        verifier.verify(reply["certificate"], now=NOW)
    assert [c.predecessor_id for c in seen] == [member.cert.peer_id]
    verifier.on_successor = lambda cert: 1 / 0  # a failing listener does not refuse a valid certificate
    verifier.forget(seen[0].peer_id)
    fresh = handle_rotate(_request(member, journal), member.cert, authority=authority, log=RotationLog(), now=NOW)
    assert verifier.verify(fresh["certificate"], now=NOW).peer_public == journal.identity.public_raw


def test_the_log_survives_a_restart_and_is_bounded(tmp_path):
    log = RotationLog(max_entries=3)
    keys = [Identity.generate().public_raw for _ in range(5)]
    for i, k in enumerate(keys):
        log.record(k, keys[(i + 1) % 5], until=NOW + i)
    assert len(log) == 3 and log.rotated_to(keys[0]) is None and log.rotated_to(keys[4]) == keys[0]
    path = tmp_path / "rotations.json"
    log.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = RotationLog.load(path)
    assert back.rotated_to(keys[3]) == keys[4]
    assert back.prune(now=NOW + 3) == 2 and len(back) == 1
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="move it away"):
        RotationLog.load(path)


def test_the_journal_round_trips_and_a_broken_one_says_what_to_do(tmp_path):
    authority = MeshAuthority(Identity.generate())
    member = Member(authority)
    journal = RotationJournal.begin(member.identity.public_raw)
    path = tmp_path / "rotation.json"
    journal.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = RotationJournal.load(path)
    assert back.identity.public_raw == journal.identity.public_raw and back.transport == journal.transport
    assert back.certificate == b"" and back.old_public == member.identity.public_raw
    reply = handle_rotate(_request(member, journal), member.cert, authority=authority, log=RotationLog(), now=NOW)
    cert, rev = accept_rotation(reply, current=member.cert, new_public=journal.identity.public_raw,
                                new_curve=journal.transport.public, authority_public_raw=authority.public_raw, now=NOW)
    journal.issued(cert, rev).save(path)
    assert RotationJournal.load(path).revocation == rev.to_bytes()
    doc = json.loads(path.read_text())
    doc["identity"] = "not a key"
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError, match="rotate"):
        RotationJournal.load(path)
    assert RotationJournal.load(tmp_path / "absent.json") is None


def test_install_and_resume_put_the_new_keys_in_place(tmp_path):
    data = DataDir(tmp_path / "peer").ensure()
    authority = MeshAuthority.create(data.authority_key)
    member = Member(authority)
    Identity.load_or_create(data.identity_key)  # the old key file, replaced by install
    MeshMembership.from_certificate(member.cert.to_bytes(), seeds=("tcp://10.0.0.1:7411",)).save(data.membership)
    member.transport.save(data.transport_key)
    assert resume_rotation(data) is None  # no journal: nothing to do
    journal = RotationJournal.begin(member.identity.public_raw)
    journal.save(data.rotation_journal)
    assert resume_rotation(data) is None  # asked but not answered: kept for the next `mesh rotate`
    assert data.rotation_journal.exists()
    reply = rotate_here(data, _request(member, journal), member.cert, now=NOW)
    assert RotationLog.load(data.rotations).rotated_to(member.identity.public_raw) == journal.identity.public_raw
    cert, rev = accept_rotation(reply, current=member.cert, new_public=journal.identity.public_raw,
                                new_curve=journal.transport.public, authority_public_raw=authority.public_raw, now=NOW)
    journal.issued(cert, rev).save(data.rotation_journal)
    # the process died before installing: the next start installs, keeping the seeds
    resumed = resume_rotation(data)
    assert resumed is not None and resumed.revocation == rev.to_bytes()
    assert Identity.load(data.identity_key).public_raw == journal.identity.public_raw
    assert TransportKeys.load(data.transport_key) == journal.transport
    membership = MeshMembership.load(data.membership)
    assert membership.certificate == cert.to_bytes() and membership.seeds == ("tcp://10.0.0.1:7411",)
    assert os.stat(data.identity_key).st_mode & 0o777 == 0o600
    assert resume_rotation(data) is not None  # installed already: still to publish, nothing rewritten
    install_rotation(data, resumed, seeds=membership.seeds)  # idempotent


def test_jobs_sessions_and_transport_keys_follow_the_successor(tmp_path):
    store = JobStore(tmp_path / "jobs.db", local_peer="old")
    mine = store.submit({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, owner="old")
    theirs = store.adopt("j" * 26, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                         owner="owner2")
    claimed = store.claim(worker="old", lease_s=60)
    assert claimed is not None
    assert store.rename_peer("old", "new") == 2  # one owned, one lease (the same job may count twice)
    assert store.get(mine.id).owner == "new" and store.local_peer == "new"
    assert store.get(claimed.id).lease_holder == "new"
    assert store.get(theirs.id).owner == "owner2"
    assert store.rename_peer("old", "new") == 0  # idempotent
    store.close()

    sessions = SessionAffinity(max_sessions=8)
    sessions.remember("s1", "old")
    sessions.remember("s2", "other")
    assert sessions.rename_peer("old", "new") == 1 and sessions.get("s1") == "new" and sessions.get("s2") == "other"

    book = KeyBook()
    old_key, new_key = TransportKeys.generate().public, TransportKeys.generate().public
    book.learn("tcp://h:1", old_key, KeySource.CERTIFIED, issued_at=NOW)
    assert book.learn("tcp://h:1", new_key, KeySource.CERTIFIED, issued_at=NOW + 10)
    # gossip still carrying the old record must not bring the old key back
    assert not book.learn("tcp://h:1", old_key, KeySource.CERTIFIED, issued_at=NOW)
    assert not book.learn("tcp://h:1", old_key, KeySource.HINT)
    assert book.key_for("tcp://h:1") == new_key


def test_routers_wait_only_for_a_rotating_member_whose_successor_is_not_here_yet():
    succ = Successors(max_entries=2)
    rotating = PeerMeta(rotating=True)

    def member(peer_id, state, meta, since_s):
        return MemberView(peer_id=peer_id, name=peer_id, state=state, meta=meta, since_s=since_s)

    view = [
        member("old", "left", rotating, 0.5),
        member("gone", "left", PeerMeta(), 0.5),  # an ordinary leave
        member("stale", "left", rotating, 60.0),
        member("odd", "left", None, 0.1),  # its meta failed its checks
    ]
    assert succ.awaiting(view) == ["old"]
    succ.learn("old", "new")
    assert succ.awaiting(view) == ["old"]  # known, but not alive yet
    assert succ.awaiting([*view, member("new", "alive", PeerMeta(), 0.0)]) == []
    succ.learn("new", "newer")  # rotated twice
    assert succ.current("old") == "newer" and succ.current("x") == "x"
    succ.learn("newer", "old")  # a cycle cannot hang the lookup
    assert succ.current("old") in ("old", "new", "newer")
    assert len(succ) == 2  # bounded


def test_remembered_peers_keep_one_peer_per_address(tmp_path):
    from mesh.discovery.hints import Hint, Source
    from mesh.discovery.seeds import RememberedPeers

    old_id, new_id = peer_id_text(b"\1" * 16), peer_id_text(b"\2" * 16)
    old_key, new_key = TransportKeys.generate().public, TransportKeys.generate().public
    known = RememberedPeers(tmp_path / "known_peers.json")
    known.merge([Hint(address="tcp://10.0.0.2:7411", source=Source.GOSSIP, seen_at=NOW, peer_id=old_id,
                      transport_key=old_key)])
    known.merge([Hint(address="tcp://10.0.0.2:7411", source=Source.GOSSIP, seen_at=NOW + 5, peer_id=new_id,
                      transport_key=new_key)])
    # the peer there rotated: only its new id and key are remembered, so a restart dials the right key
    assert [(h.peer_id, h.transport_key) for h in known.hints()] == [(new_id, new_key)]


def test_a_name_pins_the_member_that_holds_it_now():
    from mesh.routing.router import Router
    from mesh.testing import ScriptedBackend

    class View:  # the member table as gossip left it mid-rotation
        def __init__(self, members):
            self.members = members

        def view(self):
            return self.members

        def rtts(self):
            return {}

    revoked = MemberView(peer_id="aaaa1111", name="laptop", state="dead", revoked=True)
    rotating = MemberView(peer_id="bbbb2222", name="laptop", state="left", meta=PeerMeta(rotating=True))
    arrived = MemberView(peer_id="cccc3333", name="laptop", state="alive")
    router = Router(self_id="self", backend=ScriptedBackend(), membership=View([revoked, rotating]), pool=None)
    assert router.resolve_peer("laptop") == "bbbb2222"  # its successor is awaited by the router
    router.membership = View([revoked, rotating, arrived])
    assert router.resolve_peer("laptop") == "cccc3333"
    assert router.resolve_peer("aaaa") == "aaaa1111"  # an id prefix still means that id
    router.membership = View([revoked, replace(arrived, peer_id="dddd4444"), arrived])
    with pytest.raises(InvalidRequest, match="2 members"):
        router.resolve_peer("laptop")  # two live members named alike: say so


def test_a_name_wins_over_an_id_prefix_it_happens_to_begin():
    """Peer ids are base32, so a member named "p2" may meet another whose id begins "p2"."""
    from mesh.routing.router import Router
    from mesh.testing import ScriptedBackend

    class View:
        def view(self):
            return [MemberView(peer_id="p2xy7777", name="p1", state="alive"),
                    MemberView(peer_id="k4zz8888", name="p2", state="alive")]

        def rtts(self):
            return {}

    router = Router(self_id="self", backend=ScriptedBackend(), membership=View(), pool=None)
    assert router.resolve_peer("p2") == "k4zz8888"
    assert router.resolve_peer("p2x") == "p2xy7777"
    assert router.resolve_peer("p1") == "p2xy7777"
