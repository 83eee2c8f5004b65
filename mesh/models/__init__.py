"""Models a peer keeps, and models it fetches from other peers.

Pure:
- ``manifest``: ``Manifest`` (a model's SHA-256, size, piece hashes and GGUF card, signed
  by the peer that publishes it), ``ModelCard``; wire checks raise ``ManifestError``.
- ``schedule``: ``PieceSchedule``, which piece to ask which source for next, and which
  sources to stop asking (bad pieces, repeated failures).
- ``rate``: ``TokenBucket``, the bandwidth cap of a pull (clock injected).

Shells:
- ``store``: ``ModelStore``, the files on disk (content-addressed, SQLite index, disk
  budget with least-recently-used eviction, resumable partial pulls).
- ``puller``: ``pull``, fetching a model's pieces from several peers at once over RPC.
- ``service``: ``ModelService``, the ``models.*`` RPC methods a peer serves.
"""
