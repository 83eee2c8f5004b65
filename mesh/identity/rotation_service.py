"""Key rotation in a running peer (``mesh rotate``): the files and the authority's side.

The pure parts (request, proof, checks, the authority's log, the journal) are in
``mesh.identity.rotation``; the switch of a running peer from its old keys to its new
ones (rebuilding the peer's wiring) is ``mesh.peer.Peer.rotate``. Here:

* ``certify_new_keys``: the first half of ``mesh rotate``: new keys journalled, the
  authority's certificate for them (and the old key's revocation) obtained and checked.
* ``serve_rotation``: method ``mesh.rotate`` where the authority key is. The caller is
  authenticated by the certificate beside its frame (valid, of this mesh, not revoked);
  the rotation is recorded in ``rotations.json`` before the answer leaves.
* ``rotate_here``: the same for a peer that holds the authority key itself.
* ``install_rotation``: put an issued rotation's keys and certificate in place of the
  old ones (identity.key, transport.key, mesh.json), each file replaced atomically; the
  journal (``rotation.json``) says what to install if the process dies in between, so
  a restart finishes it (``resume_rotation``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mesh.errors import MeshError
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import Certificate
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.files import write_atomic
from mesh.identity.membership import MeshMembership
from mesh.identity.renewal_service import ask_authority
from mesh.identity.rotation import (
    ROTATE_METHOD,
    RotationJournal,
    RotationLog,
    accept_rotation,
    handle_rotate,
    rotation_request,
)
from mesh.paths import DataDir
from mesh.rpc.server import CallContext, Method, unary

log = logging.getLogger("mesh.identity.rotation_service")


async def certify_new_keys(
    data: DataDir, *, identity, membership: MeshMembership, certificate: Certificate, members, pool,
    now: float, skew_s: float, rng,
) -> tuple[RotationJournal, Certificate]:
    """New keys for this peer, certified. They are journalled in ``rotation.json`` before
    anything leaves (a crash retries with the same keys); the authority (this data dir's
    key, or a live member holding it) certifies them under this peer's name as its
    successor and hands back the old key's revocation; the answer is checked and
    journalled. A journal whose answer came but whose switch never ran is used as is (the
    authority would refuse fresh keys for the same old key). Returns the journal and the
    new certificate; ``MeshError`` when refused."""
    journal = RotationJournal.load(data.rotation_journal)
    if journal is None or journal.old_public != identity.public_raw:
        journal = RotationJournal.begin(identity.public_raw)
        journal.save(data.rotation_journal)  # before asking: a crash retries with these keys
    args = rotation_request(journal.identity, journal.transport.public, old_public=identity.public_raw,
                            mesh_id=membership.mesh_id)
    try:
        if journal.certificate:  # answered before, but the switch did not happen: use that answer
            reply = {"certificate": journal.certificate, "revocation": journal.revocation}
        elif data.authority_key.exists():
            reply = rotate_here(data, args, certificate, now=now)
        else:
            reply = await ask_authority(members, pool, ROTATE_METHOD, args, rng=rng, timeout_s=10.0)
        cert, rev = accept_rotation(
            reply, current=certificate, new_public=journal.identity.public_raw,
            new_curve=journal.transport.public, authority_public_raw=membership.authority_public,
            now=now, skew_s=skew_s,
        )
    except MeshError as e:
        raise MeshError(f"key rotation refused: {e}") from None
    journal = journal.issued(cert, rev)
    journal.save(data.rotation_journal)
    return journal, cert

ROTATE_LOCAL_METHOD = "peer.rotate"  # unary, local callers only (the mesh CLI): start rotating this peer's keys


def rotate_here(data: DataDir, args: dict, current: Certificate | None, *, now: float,
                ttl_s: float = DEFAULT_CERT_TTL_S) -> dict:
    """Answer a rotation request with the authority key in ``data`` (records it first)."""
    if not data.authority_key.exists():
        raise MeshError("this peer does not hold the mesh authority key; ask one whose meta says renew")
    rotations = RotationLog.load(data.rotations)
    rotations.prune(now=now)
    reply = handle_rotate(args, current, authority=MeshAuthority.load(data.authority_key), log=rotations,
                          now=now, ttl_s=ttl_s)
    rotations.save(data.rotations)
    assert current is not None
    log.info("rotated the keys of %s (%s): its old key is revoked once it has switched",
             current.name, current.peer_id_text[:12])
    return reply


def serve_rotation(
    data: DataDir, verifier: CertificateVerifier, *, clock: Callable[[], float] = time.time,
    ttl_s: float = DEFAULT_CERT_TTL_S,
) -> Method:
    """``mesh.rotate``: certify the caller's new keys (only where the authority key is)."""

    async def rotate(args: dict, ctx: CallContext) -> dict:
        now = clock()
        return rotate_here(data, args, verifier.certificate_for(ctx.sender, now=now), now=now, ttl_s=ttl_s)

    return unary(rotate)


def install_rotation(data: DataDir, journal: RotationJournal, *, seeds: tuple[str, ...] = ()) -> MeshMembership:
    """Replace this data dir's keys and certificate with the journal's (issued) ones."""
    assert journal.certificate, "only an issued rotation is installed"
    membership = MeshMembership.from_certificate(journal.certificate, seeds=seeds)
    write_atomic(data.identity_key, journal.identity.to_pem())
    journal.transport.save(data.transport_key)
    membership.save(data.membership)
    return membership


def resume_rotation(data: DataDir) -> RotationJournal | None:
    """At start: finish installing a rotation the authority had issued when the process
    stopped. Returns the journal while its revocation is still to be published, None when
    there is nothing to do. A journal whose request never got an answer is kept: the next
    ``mesh rotate`` asks again with the same keys."""
    journal = RotationJournal.load(data.rotation_journal)
    if journal is None or not journal.certificate:
        return None
    membership = MeshMembership.load(data.membership) if data.membership.exists() else None
    if membership is None or membership.certificate != journal.certificate:
        seeds = membership.seeds if membership is not None else ()
        install_rotation(data, journal, seeds=seeds)
        log.info("finished installing the keys of an interrupted `mesh rotate` (peer was %s)",
                 journal.old_peer_id_text[:12])
    return journal
