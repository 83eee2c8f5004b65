"""Command-line entry points: ``mesh`` (mesh_main) and ``mesh-peer`` (peer_main)."""
