"""The tunnel's frames and grants: pure rules, no sockets (the shell is ``mesh.rpc.tunnel``).

A tunnel carries one TCP byte stream (a ggml RPC connection, issue 16) between two
members, inside a CurveZMQ connection. Each ZeroMQ message is two frames,
``[kind, payload]``:

========  =========================  ===============================================
kind      sender                     payload
========  =========================  ===============================================
``O``     opener                     a grant token (``TOKEN_BYTES``): open a stream
``K``     server                     empty: opened, bytes may flow
``R``     server                     a reason (UTF-8): refused; nothing was opened
``D``     either                     stream bytes (1 .. ``MAX_DATA``)
``C``     either                     empty: the stream ended (or could not go on)
``P``     opener                     empty: keep-alive ping
``Q``     server                     empty: keep-alive pong
========  =========================  ===============================================

Who may open: a **grant**, made by the lender when a member asks it (over signed RPC,
``lend.reserve``) and bound to that member's CurveZMQ key. An ``O`` frame is honoured
only with a live grant token, over a connection whose CurveZMQ key is the one the grant
names; anything else is refused and counted. A revoked member's grants are dropped and
its streams closed (``Grants.revoke_key``).

Data frames are not signed one by one with Ed25519 (the RPC envelope's rule): at ggml
RPC's rate of small messages (several per generated token) that would cost more than
the tunnel's whole budget. Each frame is still authenticated and encrypted by CurveZMQ
(a Poly1305 tag per message, under a session key agreed with the member's certified
transport key), and the stream was opened with a grant the member asked for in a signed
call, so every byte is tied to the member who asked.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.errors import MeshError

OPEN, OPENED, REFUSED, DATA, CLOSE, PING, PONG = b"O", b"K", b"R", b"D", b"C", b"P", b"Q"
KINDS = frozenset({OPEN, OPENED, REFUSED, DATA, CLOSE, PING, PONG})
TOKEN_BYTES = 32
MAX_DATA = 4 << 20  # a TCP read is at most 1 MiB; a peer that sends more is not a mesh tunnel
MAX_REASON = 1024


class TunnelFrameError(MeshError):
    """A tunnel message that breaks the rules above; ``reason`` is the counter's label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TunnelFrame:
    kind: bytes
    payload: bytes


def parse(frames: list[bytes]) -> TunnelFrame:
    """One tunnel message (``[kind, payload]``) checked, or ``TunnelFrameError``."""
    if len(frames) != 2:
        raise TunnelFrameError("bad_shape", f"a tunnel message has 2 frames, not {len(frames)}")
    kind, payload = bytes(frames[0]), frames[1]
    if kind not in KINDS:
        raise TunnelFrameError("unknown_kind", f"unknown tunnel frame kind {kind[:8]!r}")
    n = len(payload)
    if kind == OPEN and n != TOKEN_BYTES:
        raise TunnelFrameError("bad_open", f"an open frame carries a {TOKEN_BYTES}-byte grant, not {n} bytes")
    if kind == DATA and not 0 < n <= MAX_DATA:
        raise TunnelFrameError("bad_data", f"a data frame carries 1..{MAX_DATA} bytes, not {n}")
    if kind == REFUSED and n > MAX_REASON:
        raise TunnelFrameError("bad_refusal", f"a refusal reason is at most {MAX_REASON} bytes")
    if kind in (OPENED, CLOSE, PING, PONG) and n:
        raise TunnelFrameError("bad_control", f"a {kind.decode()} frame carries nothing, not {n} bytes")
    return TunnelFrame(kind, bytes(payload))


@dataclass
class Grant:
    token: bytes
    key: bytes  # the CurveZMQ public key of the member allowed to open streams with it
    holder: str  # that member's peer id (text), for logs and `mesh status`
    nbytes: int  # memory reserved for it
    expires_at: float | None  # None: until released


@dataclass
class Grants:
    """The lender's live grants. Pure: time is passed in, randomness is a callable."""

    token_bytes: Callable[[], bytes] = field(default=lambda: secrets.token_bytes(TOKEN_BYTES))
    _by_token: dict[bytes, Grant] = field(default_factory=dict)

    def grant(self, key: bytes, holder: str, nbytes: int, *, expires_at: float | None = None) -> Grant:
        g = Grant(self.token_bytes(), key, holder, nbytes, expires_at)
        self._by_token[g.token] = g
        return g

    def check(self, token: bytes, key: bytes | None, now: float) -> Grant | None:
        """The grant ``token`` names, if it is live and bound to ``key``."""
        g = self._by_token.get(token)
        if g is None or key is None or not secrets.compare_digest(g.key, key):
            return None
        if g.expires_at is not None and now >= g.expires_at:
            del self._by_token[token]
            return None
        return g

    def release(self, token: bytes) -> Grant | None:
        return self._by_token.pop(token, None)

    def revoke_key(self, key: bytes) -> list[Grant]:
        """Drop every grant bound to ``key``; the dropped ones."""
        gone = [g for g in self._by_token.values() if g.key == key]
        for g in gone:
            del self._by_token[g.token]
        return gone

    def reserved(self, now: float) -> int:
        """Bytes held by live grants."""
        return sum(g.nbytes for g in self.live(now))

    def live(self, now: float) -> list[Grant]:
        for t in [t for t, g in self._by_token.items() if g.expires_at is not None and now >= g.expires_at]:
            del self._by_token[t]
        return list(self._by_token.values())
