"""What this peer believes about one member: the table entry and the view handed out.

``Member`` is the frozen table entry the merge rules (``mesh.gossip.merge``) take and
return. ``MemberSnapshot`` is the read-only snapshot ``Swim.members()`` gives the shell,
the router and the CLI; its ``load`` is the newest load this peer knows of the member,
which travels outside the signed record (``mesh.gossip.load``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from mesh.gossip.load import Load
from mesh.gossip.record import MemberRecord


class Status(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


# Wire codes of Status (sync entries). ONLY APPEND TO THIS LIST.
STATUS_CODES = (Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT)
STATUS_CODE = {s: i for i, s in enumerate(STATUS_CODES)}

# At equal incarnation a later state wins: alive < suspect < dead < left (memberlist).
RANK = {Status.ALIVE: 0, Status.SUSPECT: 1, Status.DEAD: 2, Status.LEFT: 3}


@dataclass(frozen=True, slots=True)
class Member:
    record: MemberRecord  # the newest owner-signed record seen (by record.key)
    status: Status
    incarnation: int  # the incarnation ``status`` is about; >= record.incarnation
    since: float  # when ``status`` last changed, this peer's clock

    @property
    def peer_id(self) -> bytes:
        return self.record.peer_id

    @property
    def live(self) -> bool:
        """Probed, gossiped to and counted in ``n``: alive or suspect."""
        return self.status is Status.ALIVE or self.status is Status.SUSPECT


@dataclass(frozen=True)
class MemberSnapshot:
    peer_id: bytes
    name: str
    status: Status
    incarnation: int
    version: int
    addresses: tuple[str, ...]
    meta: dict[str, Any]
    credential: bytes
    since: float  # when the status last changed
    last_heard: float | None  # last message received from this member directly (None: never)
    is_self: bool = False
    load: Load | None = None  # its newest load this peer knows (mesh.gossip.load); None: only meta's
    load_heard_at: float | None = None  # when this peer learned that load value (its clock)

    @classmethod
    def of(
        cls, m: Member, *, last_heard: float | None, is_self: bool = False, load: Load | None = None,
        load_heard_at: float | None = None,
    ) -> MemberSnapshot:
        r = m.record
        return cls(
            peer_id=r.peer_id,
            name=r.name,
            status=m.status,
            incarnation=m.incarnation,
            version=r.version,
            addresses=r.addresses,
            meta=r.meta,
            credential=r.credential,
            since=m.since,
            last_heard=last_heard,
            is_self=is_self,
            load=load,
            load_heard_at=load_heard_at,
        )
