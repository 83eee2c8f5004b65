"""Why gossip refused something, and the one error the gossip codecs raise.

``GossipError`` sits under ``mesh.errors.MeshError``; it carries a ``GossipReason`` the
way ``EnvelopeRejected`` carries a ``RejectReason``. The codecs (``record``,
``messages``) raise it for any input they refuse. ``Swim.receive`` catches it, counts
it in ``Swim.stats.rejected`` by reason, and drops the message: a hostile or buggy
datagram never reaches the state machine and never raises out of it.
"""

from __future__ import annotations

import enum

from mesh.errors import MeshError


class GossipReason(enum.Enum):
    OVERSIZE = "oversize"  # longer than the configured cap, dropped before parsing
    MALFORMED = "malformed"  # not msgpack, or truncated
    BAD_VERSION = "bad_version"  # a gossip protocol version this peer does not speak
    BAD_FIELD = "bad_field"  # a field of the wrong type, size or range
    UNKNOWN_TYPE = "unknown_type"  # a message type this peer does not know
    BAD_RECORD = "bad_record"  # a member record whose signature or credential failed verify_record
    TABLE_FULL = "table_full"  # a new member while the table is at max_members with nothing to evict
    MISDIRECTED = "misdirected"  # a ping meant for another peer id (a restarted peer at an old address)
    FROM_SELF = "from_self"  # a message claiming to come from this peer
    BAD_LOAD = "bad_load"  # a load value (own or relayed) of the wrong shape or out of range
    LOAD_AHEAD = "load_ahead"  # a load version further ahead of this peer's clock than load_future_s


class GossipError(MeshError):
    """Input refused by the gossip codecs or merge rules. ``reason`` is a ``GossipReason``."""

    def __init__(self, reason: GossipReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
