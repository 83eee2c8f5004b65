"""The key resolver a peer's RPC uses, and the one door for keys nobody vouches for yet.

Authenticated keys: this peer's own, the trust file's (the local CLI), and those
certified by this mesh's authority (learned from the certificate a sender presents
beside its frames). A device that is not a member yet has none of these; to enrol it
presents a *self-asserted* key (``self_credential``). That key is held provisionally:
enough to verify the signature on its frames, never enough to pass the RPC server's
authentication gate, so it reaches only public methods (``mesh.enrol``).

Attack: anyone can mint self-asserted keys, so the provisional table is a small LRU
(``max_provisional``); a flood evicts older provisional keys, never an authenticated
one, and costs the attacker a valid signature per frame.
"""

from __future__ import annotations

from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesh.errors import CertificateError
from mesh.identity.credentials import CertificateVerifier, MeshKeys
from mesh.identity.keys import Identity, load_public_raw, peer_id_from_public

SELF_PREFIX = b"mesh/self-key\0"


def self_credential(identity: Identity) -> bytes:
    """The credential of a device that has no certificate yet: its public key, unvouched."""
    return SELF_PREFIX + identity.public_raw


class PeerKeys:
    def __init__(
        self, keys: MeshKeys, *, certificates: CertificateVerifier | None, max_provisional: int = 64
    ) -> None:
        self.keys = keys
        self.certificates = certificates
        self.max_provisional = max_provisional
        self._provisional: OrderedDict[bytes, Ed25519PublicKey] = OrderedDict()

    def key_for(self, peer_id: bytes) -> Ed25519PublicKey | None:
        return self.keys.key_for(peer_id) or self._provisional.get(peer_id)

    def authenticated(self, peer_id: bytes) -> bool:
        return self.keys.key_for(peer_id) is not None

    def is_provisional(self, peer_id: bytes) -> bool:
        """Known only by a self-asserted key: a certificate it presents is still checked."""
        return peer_id in self._provisional and not self.authenticated(peer_id)

    def certified_peer(self, credential: bytes, now: float) -> bytes:
        """The ``credentials`` seam of the envelope checks: learn a sender's key."""
        if credential.startswith(SELF_PREFIX):
            raw = credential[len(SELF_PREFIX):]
            peer_id = peer_id_from_public(raw)
            self._provisional[peer_id] = load_public_raw(raw)
            self._provisional.move_to_end(peer_id)
            while len(self._provisional) > self.max_provisional:
                self._provisional.popitem(last=False)
            return peer_id
        if self.certificates is None:
            raise CertificateError("this peer is in no mesh yet and cannot check certificates")
        peer_id = self.certificates.certified_peer(credential, now)
        self._provisional.pop(peer_id, None)  # certified now: no longer provisional
        return peer_id
