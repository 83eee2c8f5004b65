"""SWIM membership and owner-signed member state, as a pure core the shell drives.

Modules, one noun each:

* ``config``     ``GossipConfig`` with ``lan()`` and ``for_tests()`` presets
* ``record``     ``MemberRecord``: the owner-signed description of a member, and its codec
* ``member``     ``Status``, the table entry ``Member``, the read-only ``MemberSnapshot``
* ``merge``      the merge rules (pure functions)
* ``timing``     SWIM/Lifeguard/memberlist formulas and local health (``Awareness``)
* ``suspicion``  one Lifeguard suspicion timer
* ``broadcast``  the transmit-limited news queue, one slot per member
* ``load``       members' load outside the signed record: versions, relay order, refutation
* ``table``      the bounded member table with tombstones
* ``state``      ``MemberState``: the table plus what news about others does to it
* ``probe``      ``Prober``: probes, ping-req relays, randomized round-robin order
* ``sync``       push-pull anti-entropy with digests
* ``messages``   the versioned wire codec of messages and news (``wire``: its helpers)
* ``effects``    ``Send``, ``MemberChanged``, ``MemberUpdated``
* ``swim``       ``Swim``: the state machine the shell drives; own record, refutation, join, leave
* ``stats``      counters; ``errors``: ``GossipError`` / ``GossipReason``
* ``view``       the typed seam to the rest of the peer: ``PeerMeta`` (what a member says
                 about itself, checked field by field) and ``MemberView`` (one member as
                 this peer sees it), each with ``to_wire`` / ``from_wire``

The shell: ``service`` (``Membership``) runs one ``Swim`` for a live peer: it sends its
effects over the RPC server, feeds it received messages and timer ticks, admits
discovery hints, and gives the rest of the peer its view of the members
(``Membership.view()``: a list of ``MemberView``).

``mesh.testing.network`` runs many ``Swim`` instances over a simulated lossy network.
"""

from mesh.gossip.config import GossipConfig
from mesh.gossip.effects import Effect, MemberChanged, MemberUpdated, Send
from mesh.gossip.errors import GossipError, GossipReason
from mesh.gossip.member import MemberSnapshot, Status
from mesh.gossip.record import MemberRecord
from mesh.gossip.swim import Swim
from mesh.gossip.view import BadMeta, MemberView, PeerMeta

__all__ = [
    "BadMeta",
    "MemberView",
    "PeerMeta",
    "Effect",
    "GossipConfig",
    "GossipError",
    "GossipReason",
    "MemberChanged",
    "MemberRecord",
    "MemberUpdated",
    "MemberSnapshot",
    "Send",
    "Status",
    "Swim",
]
