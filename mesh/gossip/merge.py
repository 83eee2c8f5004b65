"""The merge rules: what one piece of news does to one table entry. Pure functions.

Each takes the current entry (``None``: unknown member) and returns the new entry, or
``None`` when the news changes nothing. The caller (``Swim``) does the rest: verify
records before merging them, start and stop suspicion timers, queue rebroadcasts, emit
events. The rules are memberlist's (``aliveNode``, ``suspectNode``, ``deadNode``) over
owner-signed records:

* Records (alive or left news) come only from their owner, signed. A newer record
  (``record.key``) replaces the stored one. Its status effect depends on incarnation:
  a higher incarnation revives (alive, or left if the record says so); an equal one
  changes nothing except ``left``, which is final for its incarnation; a lower one is
  kept as a description but the status stays.
* Suspect and dead are assertions any member may make about ``(peer_id, incarnation)``.
  They never create an entry (a flood of claims about unknown ids costs no memory), are
  ignored below the known incarnation, and at equal incarnation order
  alive < suspect < dead < left. Suspect never overrides dead or left.
* Nobody but the owner can bring a member back: only a record with a higher
  incarnation (a refutation, signed by the owner) moves suspect/dead back to alive.
"""

from __future__ import annotations

from mesh.gossip.member import RANK, Member, Status
from mesh.gossip.record import MemberRecord


def is_news(current: Member | None, record: MemberRecord) -> bool:
    """Whether ``record`` is newer than what we hold. Checked before paying for verification."""
    return current is None or record.key > current.record.key


def merge_record(current: Member | None, record: MemberRecord, *, now: float) -> Member | None:
    if not is_news(current, record):
        return None
    own_status = Status.LEFT if record.left else Status.ALIVE
    if current is None:
        return Member(record, own_status, record.incarnation, now)
    if record.incarnation > current.incarnation:
        status, incarnation = own_status, record.incarnation
    elif record.incarnation == current.incarnation and record.left:
        status, incarnation = Status.LEFT, current.incarnation
    else:
        status, incarnation = current.status, current.incarnation
    since = current.since if status is current.status else now
    return Member(record, status, incarnation, since)


def merge_suspect(current: Member | None, incarnation: int, *, now: float) -> Member | None:
    """Suspect ``(peer, incarnation)``. While already suspect this returns ``None`` (or the
    raised incarnation): the caller counts it as a Lifeguard confirmation instead."""
    if current is None or incarnation < current.incarnation:
        return None
    if current.status is Status.SUSPECT:
        if incarnation == current.incarnation:
            return None
        return Member(current.record, Status.SUSPECT, incarnation, current.since)
    if current.status is not Status.ALIVE:
        return None  # dead and left outrank suspect; only the owner's record revives
    return Member(current.record, Status.SUSPECT, incarnation, now)


def merge_dead(current: Member | None, incarnation: int, *, now: float) -> Member | None:
    if current is None or incarnation < current.incarnation:
        return None
    if incarnation == current.incarnation and RANK[current.status] >= RANK[Status.DEAD]:
        return None
    since = current.since if current.status is Status.DEAD else now
    return Member(current.record, Status.DEAD, incarnation, since)
