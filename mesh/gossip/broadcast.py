"""The queue of news waiting to be piggybacked (memberlist ``queue.go``).

* One slot per member: news about a member replaces any queued news about the same
  member (its newer record, a suspicion, a death). Load refreshes about once a second
  therefore cannot pile up: the queue holds at most one item per member, the newest.
* Each item is sent ``limit`` times (``timing.retransmit_limit``: O(log n)), then dropped;
  meta-only refreshes ``meta_limit`` times (fewer: the next refresh supersedes them).
* Order: urgent items first (membership changes: join, suspect, dead, refute, leave),
  then meta-only refreshes; within each, the least-sent first, then the newest. Load
  churn can therefore delay other load churn, never a failure or a join.
* ``take`` fills a byte budget. An item larger than the whole budget may go alone, so a
  large record is slow to spread but never stuck.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

_SKIP_LIMIT = 16  # items that did not fit, looked past before giving up on filling the budget


@dataclass(slots=True)
class _Item:
    data: bytes
    urgent: bool
    transmits: int
    seq: int

    def order(self, key: bytes) -> tuple:
        return (0 if self.urgent else 1, self.transmits, -self.seq, key)


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: dict[bytes, _Item] = {}
        self._order: list[tuple] = []  # sorted by _Item.order
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def put(self, key: bytes, data: bytes, *, urgent: bool) -> None:
        """Queue ``data`` as the news about ``key``, replacing what was queued for it.

        An urgent item replaced by a newer non-urgent one stays urgent: the newer record
        carries the membership change too.
        """
        old = self._items.get(key)
        if old is not None:
            urgent = urgent or old.urgent
            self._remove_order(key, old)
        self._seq += 1
        item = _Item(data, urgent, 0, self._seq)
        self._items[key] = item
        bisect.insort(self._order, item.order(key))

    def drop(self, key: bytes) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._remove_order(key, old)

    def take(self, budget_bytes: int, limit: int, *, max_items: int, meta_limit: int | None = None) -> list[bytes]:
        """Items for one message, within ``budget_bytes``; each counts as one transmission."""
        meta_limit = limit if meta_limit is None else meta_limit
        picked: list[tuple] = []
        used = skipped = 0
        for entry in self._order:
            size = len(self._items[entry[3]].data)
            if used + size > budget_bytes:
                if not picked and size > budget_bytes:
                    picked.append(entry)  # too big for any message: let it go alone
                    break
                skipped += 1
                if skipped > _SKIP_LIMIT:
                    break
                continue
            picked.append(entry)
            used += size
            if len(picked) >= max_items or budget_bytes - used < 32:
                break
        out = []
        for entry in picked:
            key = entry[3]
            item = self._items[key]
            out.append(item.data)
            self._remove_order(key, item)
            item.transmits += 1
            if item.transmits >= (limit if item.urgent else meta_limit):
                del self._items[key]
            else:
                bisect.insort(self._order, item.order(key))
        return out

    def _remove_order(self, key: bytes, item: _Item) -> None:
        i = bisect.bisect_left(self._order, item.order(key))
        del self._order[i]
