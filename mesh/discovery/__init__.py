"""Finding peers: mDNS on the LAN, ``--join`` seeds, and peers remembered from gossip.

Everything found here is a ``Hint``: an address to try. Discovery never admits a peer;
the handshake does, when the peer proves a certificate of this mesh (ARCHITECTURE.md,
"Trust model").

- ``hints``: the ``Hint`` type and the pure checks of mDNS records (``DropReason``,
  ``DiscoveryStats``)
- ``mdns``: ``MdnsDiscovery``, announcing and browsing ``_mesh._tcp.local.``
- ``seeds``: ``parse_seeds`` for ``--join`` and ``RememberedPeers`` (``known_peers.json``)
"""

from mesh.discovery.hints import SERVICE_TYPE, DiscoveryStats, DropReason, Hint, Source
from mesh.discovery.mdns import DiscoveryError, MdnsDiscovery
from mesh.discovery.seeds import RememberedPeers, parse_seed, parse_seeds, seed_hints

__all__ = [
    "SERVICE_TYPE",
    "DiscoveryError",
    "DiscoveryStats",
    "DropReason",
    "Hint",
    "MdnsDiscovery",
    "RememberedPeers",
    "Source",
    "parse_seed",
    "parse_seeds",
    "seed_hints",
]
