"""Certificate renewal: a member gets a fresh certificate for the same keys before its
current one expires, from a peer holding the mesh authority key.

    member (certificate due)                          authority holder
    renewal_due(cert, now, fraction)
    call "mesh.renew" {} with its current cert  --->  handle_renew(current, authority, now)
                                                        current: the caller's certificate as
                                                        the envelope checks admitted it (valid,
                                                        of this mesh, not revoked)
    accept_renewal(reply, current, ...)         <---  {certificate: bin}
    -> save in mesh.json, present from now on

The request needs no arguments: the caller is authenticated by the certificate it
presents beside every frame, and what it gets is that certificate again (same key,
name and CurveZMQ key) with a new validity and serial. So a stolen-then-revoked
certificate cannot be renewed (the envelope refuses it), and renewing cannot change
who a member is. Attack: a member asking again and again for certificates; refused
until half of its current certificate's lifetime has passed (``MIN_RENEW_FRACTION``).

Pure: ``now`` is passed in; RPC wiring is in ``mesh.identity.renewal_service``.
"""

from __future__ import annotations

from typing import Any

from mesh.errors import CertificateError, InvalidRequest
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import DEFAULT_SKEW_S, Certificate, verify_certificate

RENEW_METHOD = "mesh.renew"
MIN_RENEW_FRACTION = 0.5  # a certificate younger than this fraction of its lifetime is not renewed
RENEW_META_KEY = "renew"  # in gossip meta: this peer holds the authority key and answers mesh.renew


def renewal_due(cert: Certificate, *, now: float, fraction: float) -> bool:
    """Whether ``fraction`` of ``cert``'s lifetime has passed."""
    return now >= cert.issued_at + fraction * (cert.expires_at - cert.issued_at)


def handle_renew(
    current: Certificate | None, *, authority: MeshAuthority, now: float, ttl_s: float = DEFAULT_CERT_TTL_S
) -> dict[str, Any]:
    """Issue ``current`` again with a new validity. ``current`` must already be admitted."""
    if current is None:
        raise CertificateError("renewal needs a current, valid certificate of this mesh: join with a token instead")
    if current.authority_public != authority.public_raw:
        raise CertificateError("that certificate is not of this mesh")
    if not renewal_due(current, now=now, fraction=MIN_RENEW_FRACTION):
        raise InvalidRequest(
            f"too early to renew: certificates are renewed after {MIN_RENEW_FRACTION:.0%} of their lifetime"
        )
    cert = authority.issue(current.peer_public, current.name, now=now, ttl_s=ttl_s, curve_public=current.curve_public)
    return {"certificate": cert}


def accept_renewal(
    reply: Any, *, current: Certificate, authority_public_raw: bytes, now: float, skew_s: float = DEFAULT_SKEW_S
) -> Certificate:
    """Check a renewal reply: this mesh's authority, the same member, and newer than ``current``."""
    if not isinstance(reply, dict) or not isinstance(reply.get("certificate"), bytes):
        raise CertificateError("malformed renewal reply")
    cert = verify_certificate(reply["certificate"], authority_public_raw=authority_public_raw, now=now, skew_s=skew_s)
    if (cert.peer_public, cert.name, cert.curve_public) != (current.peer_public, current.name, current.curve_public):
        raise CertificateError("the renewed certificate names another member than this one")
    if cert.expires_at <= current.expires_at or cert.issued_at < current.issued_at:
        raise CertificateError("the renewed certificate is not newer than the current one")
    return cert
