"""Which CurveZMQ key to expect at an address, for connections this peer opens.

A CURVE client must name the server's public key before its handshake, so every
address this peer dials needs one. Where they come from, strongest first:

* ``CERTIFIED``: a member record whose owner signed these addresses, checked against
  the certificate (this mesh's authority) that names the key.
* ``PINNED``: given by the operator or a trust anchor: ``--join HOST:PORT@KEY``, the
  join token (the inviter's key and addresses), ``peer.json``.
* ``HINT``: unverified: an mDNS TXT ``c`` or a remembered peer.

A weaker source never replaces a stronger one for the same address, so a spoofed mDNS
record cannot redirect a member's connections (attack: announce a victim's address with
a key of one's own). Between two certified keys for one address, the one from the more
recently issued certificate stands: after ``mesh rotate`` the peer at that address has
a new key, and the old record that gossip may still carry must not bring the old one
back. A wrong key costs only a failed handshake: nothing is sent in the clear, and the
server behind the address cannot read what it cannot decrypt.

Bounded: ``max_entries`` addresses, least recently learned dropped first.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from mesh.identity.transport import KEY_BYTES

DEFAULT_MAX_ENTRIES = 4096


class KeySource(enum.IntEnum):
    HINT = 1
    PINNED = 2
    CERTIFIED = 3


class KeyBook:
    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        # address -> (key, strongest source that named it, issued_at of the certificate behind it)
        self._keys: OrderedDict[str, tuple[bytes, KeySource, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def learn(self, address: str, key: bytes, source: KeySource, *, issued_at: int = 0) -> bool:
        """Remember ``key`` for ``address`` unless a stronger source named another, or (both
        certified) a certificate issued after ``issued_at`` did. True if changed."""
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            return False
        old = self._keys.get(address)
        if old is not None:
            old_key, old_source, old_issued = old
            if old_source > source:
                return False
            if old_key == key:
                source, issued_at = max(source, old_source), max(issued_at, old_issued)
            elif old_source is source is KeySource.CERTIFIED and issued_at < old_issued:
                return False
        self._keys[address] = (key, source, issued_at)
        self._keys.move_to_end(address)
        while len(self._keys) > self.max_entries:
            self._keys.popitem(last=False)
        return old is None or old[0] != key

    def key_for(self, address: str) -> bytes | None:
        entry = self._keys.get(address)
        return None if entry is None else entry[0]
