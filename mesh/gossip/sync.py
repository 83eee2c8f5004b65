"""Push-pull anti-entropy with digests: what to send a member, given what it holds.

SWIM's dissemination is probabilistic; memberlist adds a periodic full-state push-pull
so that anything missed (and a healed partition) converges. Sending every record on
every sync would cost each member O(n) bytes per sync, about 560 KB at n = 1000, so
here a sync exchanges digests (about 28 bytes per member) and only the entries the
other side lacks:

1. A -> B  ``Sync(digest=A's view, reply=True)``
2. B -> A  ``Sync(entries=what A lacks, digest=B's view)``
3. A -> B  ``Sync(entries=what B lacks)`` (only if B lacks anything)

"Lacks" is ``newer``: a member the other side does not know (if live), a higher
incarnation or a later status at equal incarnation (membership news), or only a higher
record version (meta news: load and the like). Membership news is always sent (within
``max_bytes``); meta-only news is capped at ``max_meta_bytes`` per sync, a random part
each time, because with load refreshing every second every pair of peers differs in
almost every version and gossip, not sync, is what carries load.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from mesh.gossip.member import RANK, Member
from mesh.gossip.messages import DigestEntry, SyncEntry

ENTRY_OVERHEAD = 16  # msgpack framing of one sync entry around its record
MEMBERSHIP, META = "membership", "meta"


def digest(members: Iterable[Member]) -> tuple[DigestEntry, ...]:
    return tuple(DigestEntry(x.peer_id, x.status, x.incarnation, x.record.key) for x in members)


def newer(ours: Member, theirs: DigestEntry | None) -> str | None:
    """Whether our entry is news to a holder of ``theirs``: ``MEMBERSHIP``, ``META`` or None."""
    if theirs is None:
        return MEMBERSHIP if ours.live else None  # nobody needs to learn of the departed
    if (ours.incarnation, RANK[ours.status]) > (theirs.incarnation, RANK[theirs.status]):
        return MEMBERSHIP
    if ours.record.key[:2] > theirs.record_key[:2]:
        return MEMBERSHIP
    if ours.record.key > theirs.record_key:
        return META
    return None


def delta(
    members: Iterable[Member],
    theirs: Iterable[DigestEntry],
    *,
    rng: random.Random,
    max_bytes: int,
    max_meta_bytes: int,
) -> tuple[SyncEntry, ...]:
    """Entries a holder of ``theirs`` lacks, membership news first, within the caps."""
    held = {d.peer_id: d for d in theirs}
    membership: list[Member] = []
    meta: list[Member] = []
    for x in members:
        kind = newer(x, held.get(x.peer_id))
        if kind is MEMBERSHIP:
            membership.append(x)
        elif kind is META:
            meta.append(x)
    rng.shuffle(membership)  # if even membership news overflows, a random part each time
    rng.shuffle(meta)
    out: list[SyncEntry] = []
    budget, meta_budget = max_bytes, max_meta_bytes
    for x in membership:
        budget -= x.record.size + ENTRY_OVERHEAD
        if budget < 0:
            return tuple(out)
        out.append(SyncEntry(x.status, x.incarnation, x.record))
    for x in meta:
        size = x.record.size + ENTRY_OVERHEAD
        meta_budget -= size
        budget -= size
        if meta_budget < 0 or budget < 0:
            break
        out.append(SyncEntry(x.status, x.incarnation, x.record))
    return tuple(out)
