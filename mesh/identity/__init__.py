"""Peer identity: Ed25519 keys, peer ids, and who this peer trusts."""

from mesh.identity.keys import Identity, peer_id_from_public, peer_id_text
from mesh.identity.trust import KeyResolver, StaticKeys, TrustStore

__all__ = ["Identity", "KeyResolver", "StaticKeys", "TrustStore", "peer_id_from_public", "peer_id_text"]
