"""mDNS discovery and static seeds. Arrives with the mesh issue (see ARCHITECTURE.md)."""
