"""The replay window: each (sender, nonce) is accepted once while its timestamp is fresh.

Frames older than the timestamp window are refused by the envelope checks anyway, so a
nonce only needs remembering for ``window_ms`` past its timestamp. Entries are kept in
arrival order and expired from the front.

Attack: a flood of frames could grow this cache. Only frames whose signature verified
reach it (see envelope.decode), so only a trusted key can fill it, and the size is
capped at ``max_entries``; past the cap the oldest entries are evicted and counted in
``evictions`` (an operator sees it, and the window is the only replay hole left).
"""

from __future__ import annotations

from collections import OrderedDict


class NonceCache:
    def __init__(self, *, window_ms: int, max_entries: int) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()  # -> expiry ms
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_record(self, sender: bytes, nonce: bytes, *, ts_ms: int, now_ms: int) -> bool:
        """True (and remembered) the first time; False for a replay."""
        self._expire(now_ms)
        key = (sender, nonce)
        if key in self._seen:
            return False
        self._seen[key] = max(ts_ms, now_ms) + self.window_ms
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evictions += 1
        return True

    def _expire(self, now_ms: int) -> None:
        seen = self._seen
        while seen:
            key, expiry = next(iter(seen.items()))
            if expiry > now_ms:
                break
            del seen[key]
