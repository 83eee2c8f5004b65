"""Identity and trust: keys, peer ids, the mesh authority, certificates and their lifecycle.

Pure (no sockets):
- ``keys``, ``peerkeys``, ``transport``: Ed25519 identity, peer ids, CurveZMQ keys.
- ``trust``: who this peer trusts (``TrustStore``, ``KeyResolver``).
- ``authority``, ``certificate``, ``credentials``: the mesh authority and its certificates.
- ``tokens``, ``invites``, ``enrolment``: join tokens and the enrolment exchange.
- ``membership``: this device's ``mesh.json`` (its mesh and certificate).
- ``renewal``, ``revocation``, ``rotation``: the rules of renewing, revoking and rotating.
- ``files``: key and state files on disk (0600, atomic).

Shell (the certificate lifecycle over RPC):
- ``joining``: create a mesh, enrol with a join token, serve enrolment.
- ``renewal_service``: ``Renewer`` renews this peer's certificate; the authority's side.
- ``revocation_service``: ``RevocationService`` spreads and enforces revocations.
- ``rotation_service``: ``mesh rotate``: new keys for a running peer.
"""

from mesh.identity.keys import Identity, peer_id_from_public, peer_id_text
from mesh.identity.trust import KeyResolver, StaticKeys, TrustStore

__all__ = ["Identity", "KeyResolver", "StaticKeys", "TrustStore", "peer_id_from_public", "peer_id_text"]
