"""Key rotation in a running peer (``mesh rotate``): the files and the authority's side.

The pure parts (request, proof, checks, the authority's log, the journal) are in
``mesh.identity.rotation``; the switch of a running peer from its old keys to its new
ones is ``mesh.peer.Peer.rotate``. Here:

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
from mesh.identity.rotation import RotationJournal, RotationLog, handle_rotate
from mesh.paths import DataDir
from mesh.rpc.server import CallContext, Method, unary

log = logging.getLogger("mesh.identity.rotation_service")

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
