"""One side's view of the envelope: seal outgoing frames, admit incoming ones.

Holds what ``mesh.rpc.envelope`` needs and keeps out of it: this side's identity, who it
trusts, its replay cache, its limits, its clock and its rejection counts. The clock is
read here, once per frame, and passed down as ``now_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mesh.errors import EnvelopeRejected
from mesh.identity.keys import Identity
from mesh.identity.trust import KeyResolver
from mesh.rpc import envelope
from mesh.rpc.config import RpcConfig
from mesh.rpc.rejections import RejectionCounter
from mesh.rpc.replay import NonceCache


class FrameCodec:
    def __init__(
        self,
        identity: Identity,
        resolver: KeyResolver,
        *,
        config: RpcConfig,
        clock: Callable[[], float] = time.time,
        credential: bytes | None = None,
        credentials: Callable[[bytes, float], bytes] | None = None,
    ) -> None:
        self.identity = identity
        self.credential = credential  # this side's certificate, sent beside every frame
        self.credentials = credentials  # verifies a peer's certificate (see envelope.decode)
        self.resolver = resolver
        self.config = config
        self.clock = clock
        window_ms = int(config.timestamp_window_s * 1000)
        self.replay = NonceCache(window_ms=window_ms, max_entries=config.nonce_cache_max)
        self.rejections = RejectionCounter()
        self._window_ms = window_ms

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def seal(self, kind: str, body: dict[str, Any], *, msg_id: bytes | None = None) -> bytes:
        return envelope.encode(self.identity, kind, body, now_ms=self.now_ms(), msg_id=msg_id)

    def parts(self, frame: bytes) -> list[bytes]:
        """The ZeroMQ message parts for a sealed frame: the frame, then this side's credential."""
        return [frame, self.credential] if self.credential else [frame]

    def open(self, frame: bytes, credential: bytes | None = None) -> envelope.Envelope:
        """Admit a frame or raise ``EnvelopeRejected`` (already counted)."""
        try:
            return envelope.decode(
                frame,
                resolver=self.resolver,
                replay=self.replay,
                now_ms=self.now_ms(),
                max_frame_bytes=self.config.max_frame_bytes,
                window_ms=self._window_ms,
                max_body_depth=self.config.max_body_depth,
                credential=credential,
                credentials=self.credentials,
            )
        except EnvelopeRejected as e:
            self.rejections.count(e.reason)
            raise
