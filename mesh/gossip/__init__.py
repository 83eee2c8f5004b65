"""SWIM membership and member-state gossip. Arrives with the mesh issue (see ARCHITECTURE.md)."""
