"""Certificate renewal: the pure rules, then a real mesh on loopback where a peer with a
certificate about to expire renews it and stays in the mesh past the old expiry."""

import asyncio
import time

import pytest

from mesh.discovery.seeds import seed_text
from mesh.errors import CertificateError, InvalidRequest
from mesh.identity.authority import MeshAuthority
from mesh.identity.certificate import CertReason
from mesh.identity.keys import Identity
from mesh.identity.membership import MeshMembership
from mesh.identity.renewal import accept_renewal, handle_renew, renewal_due
from mesh.identity.transport import TransportKeys
from mesh.paths import DataDir
from mesh.peer import Peer
from mesh.testing import ScriptedBackend
from support import loopmesh
from support.loopmesh import run, wait_for

NOW = 1_800_000_000
DAY = 24 * 3600


def issued(authority: MeshAuthority, peer: Identity, *, now=NOW, ttl=30 * DAY, name="laptop"):
    from mesh.identity.certificate import Certificate

    return Certificate.from_bytes(authority.issue(peer.public_raw, name, now=now, ttl_s=ttl))


def test_due_at_the_configured_fraction():
    authority, peer = MeshAuthority(Identity.generate()), Identity.generate()
    cert = issued(authority, peer, ttl=30 * DAY)
    assert not renewal_due(cert, now=NOW + 19 * DAY, fraction=2 / 3)
    assert renewal_due(cert, now=NOW + 20 * DAY, fraction=2 / 3)


def test_renew_issues_the_same_member_again_and_the_reply_is_checked():
    authority, peer = MeshAuthority(Identity.generate()), Identity.generate()
    cert = issued(authority, peer)
    with pytest.raises(InvalidRequest, match="too early"):
        handle_renew(cert, authority=authority, now=NOW + DAY)
    with pytest.raises(CertificateError):
        handle_renew(None, authority=authority, now=NOW + 20 * DAY)
    with pytest.raises(CertificateError):
        handle_renew(cert, authority=MeshAuthority(Identity.generate()), now=NOW + 20 * DAY)
    now = NOW + 20 * DAY
    reply = handle_renew(cert, authority=authority, now=now)
    new = accept_renewal(reply, current=cert, authority_public_raw=authority.public_raw, now=now)
    assert (new.peer_public, new.name, new.curve_public) == (cert.peer_public, cert.name, cert.curve_public)
    assert new.serial != cert.serial and new.expires_at == now + 30 * DAY
    # replies that must not be accepted: garbage, another member, another mesh, not newer
    with pytest.raises(CertificateError):
        accept_renewal({"certificate": "x"}, current=cert, authority_public_raw=authority.public_raw, now=now)
    other = {"certificate": issued(authority, Identity.generate(), now=now).to_bytes()}
    with pytest.raises(CertificateError, match="another member"):
        accept_renewal(other, current=cert, authority_public_raw=authority.public_raw, now=now)
    renamed = {"certificate": issued(authority, peer, now=now, name="imposter").to_bytes()}
    with pytest.raises(CertificateError, match="another member"):
        accept_renewal(renamed, current=cert, authority_public_raw=authority.public_raw, now=now)
    foreign = {"certificate": issued(MeshAuthority(Identity.generate()), peer, now=now).to_bytes()}
    with pytest.raises(CertificateError) as e:
        accept_renewal(foreign, current=cert, authority_public_raw=authority.public_raw, now=now)
    assert e.value.reason is CertReason.OTHER_MESH
    with pytest.raises(CertificateError, match="not newer"):
        accept_renewal({"certificate": cert.to_bytes()}, current=cert, authority_public_raw=authority.public_raw,
                       now=now)


def test_the_renewer_renews_on_its_injected_clock(tmp_path):
    """No sockets, no sleeping: the authority's own peer renews from its own data dir."""
    from mesh.identity.joining import create_mesh
    from mesh.identity.renewal_service import Renewer

    data = DataDir(tmp_path / "a").ensure()
    identity, _ = Identity.load_or_create(data.identity_key)
    t = [float(NOW)]
    transport, _ = TransportKeys.load_or_create(data.transport_key)
    membership = create_mesh(data, identity, name="hub", transport=transport, now=t[0])
    cert = membership.verify(peer_public_raw=identity.public_raw, now=t[0])
    seen = []
    renewer = Renewer(data=data, membership=membership, certificate=cert, members=None, pool=None,
                      on_renewed=lambda m, c: seen.append(c), clock=lambda: t[0])
    assert not run(renewer.renew_if_due())
    t[0] += 21 * DAY
    assert run(renewer.renew_if_due())
    assert seen[0].issued_at == NOW + 21 * DAY and renewer.current is seen[0]
    assert seen[0].curve_public == transport.public  # the renewed certificate keeps the transport key
    assert MeshMembership.load(data.membership).certificate == seen[0].to_bytes()
    assert not run(renewer.renew_if_due())  # the new one is not due
    with pytest.raises(Exception, match="renew_at"):
        Renewer(data=data, membership=membership, certificate=cert, members=None, pool=None,
                on_renewed=print, fraction=0.3)


def test_a_peer_renews_before_expiry_and_stays_in_the_mesh(tmp_path):
    """p1 starts with a 9-second certificate; every peer honours certificates only 0.5 s
    past expiry (instead of 5 minutes), so without renewal p1 would be refused after ~9 s."""
    short = {"cert_skew_s": 0.5, "renew_check_s": 0.2}

    async def main():
        p0 = Peer(loopmesh.config(tmp_path, "p0", **short), backend=ScriptedBackend())
        await p0.start()
        peers = [p0]
        try:
            # p1's data dir: its identity and a short-lived certificate from p0's authority
            data = DataDir(tmp_path / "p1").ensure()
            identity, _ = Identity.load_or_create(data.identity_key)
            authority = MeshAuthority.load(DataDir(tmp_path / "p0").authority_key)
            now = time.time()
            transport = TransportKeys.generate()
            transport.save(data.transport_key)
            old = authority.issue(identity.public_raw, "p1", now=now - 1, ttl_s=9, curve_public=transport.public)
            MeshMembership.from_certificate(old, seeds=(p0.endpoint,)).save(data.membership)
            p1 = Peer(loopmesh.config(tmp_path, "p1", seeds=(seed_text(p0.endpoint, p0.transport.public),), **short), backend=ScriptedBackend())
            await p1.start()
            peers.append(p1)
            await wait_for(lambda: {m.name: m.state for m in p0.membership_service.view()}.get("p1") == "alive")
            # p0 holds the authority key and says so in its meta
            await wait_for(lambda: any(m.meta is not None and m.meta.renew for m in p1.membership_service.view()
                                       if m.name == "p0" and m.state == "alive"))
            # renewed at 2/3 of its life (~5 s in), from p0 over mesh.renew
            await wait_for(lambda: p1.renewer.renewals == 1, 15)
            assert MeshMembership.load(data.membership).certificate != old
            assert p1.certificate.expires_at > now + 29 * 24 * 3600
            # past the old expiry (+ skew): still a member both ways; the old one is refused
            await asyncio.sleep(max(0.0, now + 8 + 0.5 + 1.5 - time.time()))
            with pytest.raises(CertificateError) as e:
                p0.keys.certificates.verify(old, now=time.time())
            assert e.value.reason is CertReason.EXPIRED
            assert {m.name: m.state for m in p0.membership_service.view()}["p1"] == "alive"
            assert {m.name: m.state for m in p1.membership_service.view()}["p0"] == "alive"
            assert (await p0.pool.client(p1.endpoint).call("ping", {}, timeout_s=3))["peer"]
            assert (await p1.pool.client(p0.endpoint).call("ping", {}, timeout_s=3))["peer"]
            assert p0.server.codec.rejections.snapshot()["bad_credential"] == 0
            assert p1.renewer.failures == 0
        finally:
            for p in peers:
                await p.stop()
    run(main())
