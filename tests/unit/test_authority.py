"""The mesh authority key, the certificates it issues, and a peer's mesh membership file."""

import base64
import json
import os
import stat

import pytest

from mesh.errors import CertificateError, IdentityError
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import CertReason, mesh_id_for, verify_certificate
from mesh.identity.keys import Identity, peer_id_from_text
from mesh.identity.membership import MeshMembership

NOW = 1_800_000_000


def test_create_is_0600_and_load_gives_the_same_mesh(tmp_path):
    path = tmp_path / "authority.key"
    auth = MeshAuthority.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = MeshAuthority.load(path)
    assert again.public_raw == auth.public_raw and again.mesh_id == auth.mesh_id
    assert auth.mesh_id == mesh_id_for(auth.public_raw)
    assert len(auth.mesh_id_text) == 26 and peer_id_from_text(auth.mesh_id_text) == auth.mesh_id


def test_create_refuses_to_replace_an_existing_key(tmp_path):
    path = tmp_path / "authority.key"
    first = MeshAuthority.create(path)
    with pytest.raises(IdentityError, match="already exists"):
        MeshAuthority.create(path)
    assert MeshAuthority.load(path).mesh_id == first.mesh_id
    os.chmod(path, 0o644)  # still "exists", not a complaint about the old file's mode
    with pytest.raises(IdentityError, match="already exists"):
        MeshAuthority.create(path)


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "authority.key"
    MeshAuthority.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        MeshAuthority.load(path)


def test_missing_key_says_who_can_invite(tmp_path):
    with pytest.raises(IdentityError, match="mesh init"):
        MeshAuthority.load(tmp_path / "authority.key")


def test_issue_signs_a_certificate_for_the_peer():
    auth, peer = MeshAuthority(Identity.generate()), Identity.generate()
    data = auth.issue(peer.public_raw, "desk", now=NOW + 0.7, curve_public=b"c" * 32)
    cert = verify_certificate(data, authority_public_raw=auth.public_raw, now=NOW)
    assert cert.peer_public == peer.public_raw and cert.peer_id == peer.peer_id
    assert cert.name == "desk" and cert.curve_public == b"c" * 32
    assert (cert.issued_at, cert.expires_at) == (NOW, NOW + DEFAULT_CERT_TTL_S)
    assert cert.mesh_id == auth.mesh_id and cert.authority_public == auth.public_raw
    other = auth.issue(peer.public_raw, "desk", now=NOW)
    assert verify_certificate(other, authority_public_raw=auth.public_raw, now=NOW).serial != cert.serial


def test_issue_with_short_ttl_expires():
    auth, peer = MeshAuthority(Identity.generate()), Identity.generate()
    data = auth.issue(peer.public_raw, "desk", now=NOW, ttl_s=60)
    with pytest.raises(CertificateError) as e:
        verify_certificate(data, authority_public_raw=auth.public_raw, now=NOW + 60, skew_s=0)
    assert e.value.reason is CertReason.EXPIRED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "x" * 65},
        {"name": "bell\a"},
        {"ttl_s": 0},
        {"ttl_s": -5},
        {"ttl_s": 100 * 365 * 24 * 3600},
        {"curve_public": b"c" * 16},
        {"peer_public_raw": b"k" * 31},
    ],
)
def test_issue_refuses_bad_inputs(kwargs):
    auth = MeshAuthority(Identity.generate())
    args = {"peer_public_raw": Identity.generate().public_raw, "name": "desk", "now": NOW} | kwargs
    with pytest.raises(IdentityError):  # CertificateError is an IdentityError
        auth.issue(**args)


# -- the membership file -----------------------------------------------------------


def membership(seeds=("tcp://10.0.0.1:7411",)):
    auth, peer = MeshAuthority(Identity.generate()), Identity.generate()
    cert = auth.issue(peer.public_raw, "desk", now=NOW)
    return auth, peer, MeshMembership.from_certificate(cert, seeds=seeds)


def test_membership_round_trip(tmp_path):
    auth, peer, m = membership()
    assert (m.mesh_id, m.authority_public, m.name) == (auth.mesh_id, auth.public_raw, "desk")
    assert m.mesh_id_text == auth.mesh_id_text
    path = tmp_path / "mesh.json"
    m.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = MeshMembership.load(path)
    assert back == m and back.seeds == ("tcp://10.0.0.1:7411",)
    assert back.verify(peer_public_raw=peer.public_raw, now=NOW).peer_id == peer.peer_id
    assert "private" not in path.read_text()  # nothing but public material


def test_membership_of_another_key_or_expired_is_refused():
    auth, peer, m = membership()
    with pytest.raises(CertificateError, match="another key"):
        m.verify(peer_public_raw=Identity.generate().public_raw, now=NOW)
    with pytest.raises(CertificateError) as e:
        m.verify(peer_public_raw=peer.public_raw, now=NOW + DEFAULT_CERT_TTL_S + 3600)
    assert e.value.reason is CertReason.EXPIRED


def _edited(tmp_path, m, **changes):
    doc = json.loads(m.to_json())
    doc.update(changes)
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    return path


def test_membership_file_whose_parts_disagree_is_refused(tmp_path):
    _, _, m = membership()
    other = MeshAuthority(Identity.generate())
    cases = {
        "another mesh's authority": {"authority_public": base64.b64encode(other.public_raw).decode()},
        "mesh_id does not match": {"mesh_id": other.mesh_id_text},
        "name does not match": {"name": "someone-else"},
        "not valid base64": {"certificate": "!!!"},
        "not a version 1": {"version": 2},
        "seeds must be a list": {"seeds": "tcp://x:1"},
    }
    for message, change in cases.items():
        with pytest.raises(IdentityError, match=message):
            MeshMembership.load(_edited(tmp_path, m, **change))


def test_membership_file_problems_are_clear(tmp_path):
    _, _, m = membership()
    with pytest.raises(IdentityError, match="mesh join"):
        MeshMembership.load(tmp_path / "missing.json")
    path = tmp_path / "mesh.json"
    m.save(path)
    os.chmod(path, 0o644)  # writable-by-others would let anyone move this peer to their mesh
    with pytest.raises(IdentityError, match="chmod 600"):
        MeshMembership.load(path)
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not JSON"):
        MeshMembership.load(path)
    path.write_bytes(b" " * (64 * 1024 + 1))
    with pytest.raises(IdentityError, match="more than"):
        MeshMembership.load(path)
