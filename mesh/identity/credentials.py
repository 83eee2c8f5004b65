"""Keys learned from certificates, and the resolver a mesh peer's envelope checks use.

``CertificateVerifier`` verifies certificates of one mesh and remembers what it learned:

* a cache of successful verifications keyed by SHA-256 of the certificate bytes, so a
  peer presenting the same certificate again (every handshake, every gossip round) costs
  a hash instead of an Ed25519 check. A hit is still re-checked against ``now``: a
  cached certificate expires on time.
* for each peer id, the most recent valid certificate seen (highest ``issued_at``), so
  it can answer ``key_for(peer_id)`` as a ``KeyResolver`` once that peer has presented
  its certificate. Keeping the most recent one means replaying an older certificate of
  the same peer cannot roll back its name or CurveZMQ key.

Bounds (everything here is fed by the network):

* Only certificates that verified are stored; refusals are not cached. Filling either
  table takes certificates signed by the authority, not garbage, and garbage costs the
  sender a bounded parse plus one signature check each (``MAX_CERT_BYTES``).
* ``max_entries`` caps the verification cache (LRU). Attack: a leaked or long-lived
  collection of valid certificates replayed one after another to grow memory. Past the
  cap the least recently used entry is dropped; the cost is one more signature check.
* ``max_peers`` caps the peer table (LRU by last verification). Same attack, and also a
  mesh that re-enrols devices for years. Eviction only means that peer's frames are
  refused as from an unknown sender until it presents its certificate again.

Revocation: with a ``RevocationList`` (``revocations=``), every answer consults it: a
revoked certificate is refused (``CertReason.REVOKED``) on the first check and on every
cache hit, and ``certificate_for``/``key_for`` stop resolving its peer, so a revoked
member's frames come back to the credential check and are refused there. ``revoke``
drops what was learned from the revoked peer at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh.errors import CertificateError
from mesh.identity.certificate import (
    DEFAULT_SKEW_S,
    MAX_CERT_BYTES,
    Certificate,
    CertReason,
    check_validity,
    rejected,
    verify_certificate,
)
from mesh.identity.keys import load_public_raw
from mesh.identity.revocation import Revocation, RevocationList
from mesh.identity.trust import KeyResolver, StaticKeys

log = logging.getLogger("mesh.identity")

DEFAULT_MAX_ENTRIES = 4096  # verified certificates remembered (~0.5 KB each)
DEFAULT_MAX_PEERS = 4096  # peers whose key this verifier can vouch for


class CertificateVerifier:
    """Verify certificates of the mesh named by ``authority_public_raw``; remember the valid ones.

    ``key_for`` has no ``now`` in the ``KeyResolver`` protocol, so it judges expiry
    against the latest ``now`` this verifier was given (by ``verify`` or ``prune``), or
    against ``now=`` when the caller passes it. The shell calls ``prune(now)`` on a
    timer so an expired peer stops resolving even when no certificate arrives.
    """

    def __init__(
        self,
        authority_public_raw: bytes,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_peers: int = DEFAULT_MAX_PEERS,
        skew_s: float = DEFAULT_SKEW_S,
        revocations: RevocationList | None = None,
        on_successor: Callable[[Certificate], None] | None = None,
    ) -> None:
        if max_entries < 1 or max_peers < 1:
            raise ValueError("max_entries and max_peers must be positive")
        self.authority_public_raw = bytes(authority_public_raw)
        load_public_raw(self.authority_public_raw)  # a bad authority key fails here, not on first use
        self.max_entries = max_entries
        self.max_peers = max_peers
        self.skew_s = skew_s
        self.revocations = revocations
        self._cache: OrderedDict[bytes, Certificate] = OrderedDict()  # sha256(cert bytes) -> cert
        self._peers: OrderedDict[bytes, Certificate] = OrderedDict()  # peer id -> most recent cert
        self._now = float("-inf")  # high-water mark of the clock readings given to us
        # called once per newly admitted certificate that names a predecessor (mesh rotate),
        # before the frame or record that carried it is acted on
        self.on_successor = on_successor
        self._revoked_transport: OrderedDict[bytes, None] = OrderedDict()  # CurveZMQ keys of revoked certificates
        self.hits = 0  # verifications answered from the cache
        self.cache_evictions = 0
        self.peer_evictions = 0

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def verify(self, cert_bytes: bytes, *, now: float) -> Certificate:
        """Admit a certificate or raise ``CertificateError`` (see ``verify_certificate``)."""
        self._now = max(self._now, now)
        if not isinstance(cert_bytes, (bytes, bytearray)):
            raise rejected(CertReason.MALFORMED, "a certificate is bytes")
        if len(cert_bytes) > MAX_CERT_BYTES:  # before hashing: never spend work on an oversize blob
            raise rejected(CertReason.OVERSIZE, f"{len(cert_bytes)} bytes > {MAX_CERT_BYTES}")
        digest = hashlib.sha256(cert_bytes).digest()
        cert = self._cache.get(digest)
        fresh = False
        if cert is not None:
            try:
                check_validity(cert, now=now, skew_s=self.skew_s)
            except CertificateError as e:
                if getattr(e, "reason", None) is CertReason.EXPIRED:
                    del self._cache[digest]
                raise
            self._cache.move_to_end(digest)
            self.hits += 1
        else:
            cert = verify_certificate(
                bytes(cert_bytes), authority_public_raw=self.authority_public_raw, now=now, skew_s=self.skew_s
            )
            self._cache[digest] = cert
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
                self.cache_evictions += 1
            fresh = True
        if self.revocations is not None and self.revocations.revokes(cert):
            # after the signature: only a certificate of this mesh can be called revoked
            self._cache.pop(digest, None)
            self._note_revoked_transport(cert)
            raise rejected(CertReason.REVOKED, f"the mesh authority revoked {cert.name} ({cert.peer_id_text[:12]})")
        self._remember_peer(cert, now)
        if fresh and cert.predecessor and self.on_successor is not None:
            try:
                self.on_successor(cert)
            except Exception:  # a listener's bug must not refuse a valid certificate
                log.exception("successor listener failed for %s", cert.peer_id_text[:12])
        return cert

    def certified_peer(self, cert_bytes: bytes, now: float) -> bytes:
        """Verify and return the peer id certified: the ``credentials`` seam of ``mesh.rpc.envelope.decode``."""
        return self.verify(cert_bytes, now=now).peer_id

    def _remember_peer(self, cert: Certificate, now: float) -> None:
        pid = cert.peer_id
        current = self._peers.get(pid)
        if current is None or cert.issued_at > current.issued_at or not self._valid(current, now):
            self._peers[pid] = cert
        self._peers.move_to_end(pid)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
            self.peer_evictions += 1

    def _valid(self, cert: Certificate, now: float) -> bool:
        return cert.issued_at - self.skew_s <= now < cert.expires_at + self.skew_s

    def certificate_for(self, peer_id: bytes, *, now: float | None = None) -> Certificate | None:
        """The most recent valid certificate this verifier has seen for ``peer_id``."""
        cert = self._peers.get(peer_id)
        if cert is None:
            return None
        if not self._valid(cert, self._now if now is None else now):
            return None
        if self.revocations is not None and self.revocations.revokes(cert):
            return None
        return cert

    def key_for(self, peer_id: bytes, *, now: float | None = None) -> Ed25519PublicKey | None:
        cert = self.certificate_for(peer_id, now=now)
        return None if cert is None else load_public_raw(cert.peer_public)

    def revoke(self, revocation: Revocation) -> None:
        """A revocation arrived (already verified and in ``revocations``): drop what we know of it."""
        self.forget(revocation.peer_id)

    def forget(self, peer_id: bytes) -> None:
        """Drop everything learned about ``peer_id`` (for revocation); remember the
        transport keys its certificates named, so its connections can be refused."""
        latest = self._peers.pop(peer_id, None)
        if latest is not None:
            self._note_revoked_transport(latest)
        for digest in [d for d, c in self._cache.items() if c.peer_id == peer_id]:
            self._note_revoked_transport(self._cache.pop(digest))

    def _note_revoked_transport(self, cert: Certificate) -> None:
        if cert.curve_public:
            self._revoked_transport[cert.curve_public] = None
            while len(self._revoked_transport) > self.max_entries:
                self._revoked_transport.popitem(last=False)

    def transport_revoked(self, key: bytes) -> bool:
        """Whether ``key`` is the CurveZMQ key of a certificate the authority revoked."""
        return key in self._revoked_transport

    def prune(self, *, now: float) -> int:
        """Drop expired certificates; advance the clock ``key_for`` judges by. Returns how many went."""
        self._now = max(self._now, now)
        before = len(self._cache) + len(self._peers)
        for table in (self._cache, self._peers):
            for k in [k for k, c in table.items() if now - self.skew_s >= c.expires_at]:
                del table[k]
        return before - len(self._cache) - len(self._peers)


class MeshKeys:
    """The ``KeyResolver`` of a mesh peer: its own key, then the trust file, then certificates.

    The trust file (``TrustStore``) holds the local CLI's client keys, which never get a
    certificate; every other member is known only through a certificate it presented.
    """

    def __init__(
        self,
        own_public_raw: bytes,
        *,
        trust: KeyResolver | None = None,
        certificates: CertificateVerifier | None = None,
    ) -> None:
        self._own = StaticKeys([own_public_raw])
        self.trust = trust
        self.certificates = certificates

    def key_for(self, peer_id: bytes) -> Ed25519PublicKey | None:
        key = self._own.key_for(peer_id)
        if key is None and self.trust is not None:
            key = self.trust.key_for(peer_id)
        if key is None and self.certificates is not None:
            key = self.certificates.key_for(peer_id)
        return key
