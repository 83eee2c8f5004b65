"""``RpcConfig``: the RPC layer's limits and timeouts, every field with its unit.

Presets: ``RpcConfig.lan()`` (the default), ``RpcConfig.for_tests()``. ``mesh-peer``'s
``--rpc-rate`` and ``--rpc-burst`` set ``calls_per_sender_per_s`` and ``calls_burst``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RpcConfig:
    max_frame_bytes: int = 1 << 20  # frames above this are dropped before any parsing
    timestamp_window_s: float = 30.0  # |sender clock - our clock| allowed; also how long nonces are kept
    nonce_cache_max: int = 200_000  # replay cache entries (oldest evicted past this)
    max_calls_per_connection: int = 64  # concurrent calls one connection may have open
    default_timeout_s: float = 300.0  # a call's deadline when the caller gives none
    max_timeout_s: float = 3600.0  # the longest deadline a caller may ask for
    max_body_depth: int = 16  # nesting limit of a message body
    max_casts_in_flight: int = 256  # one-way messages being handled at once; more are dropped
    calls_per_sender_per_s: float = 200.0  # calls one sender may start per second (0: no limit) ...
    calls_burst: int = 400  # ... after a burst of this many; past it: "busy" (rate limited), counted
    casts_per_sender_per_s: float = 100.0  # one-way messages (gossip) per sender per second ...
    casts_burst: int = 200  # ... after this burst; past it they are dropped and counted
    max_senders_tracked: int = 10_000  # rate-limit buckets kept (idle ones go first)
    max_connections_busy: int = 1024  # connections with calls in flight at once; more: "busy"
    notices_per_s: float = 50.0  # signed "you were refused" notices sent per second, all senders ...
    notices_burst: int = 100  # ... after this burst; past it a refused frame is only counted
    handshake_timeout_s: float = 10.0  # a connection that has not finished its CurveZMQ handshake by then is closed

    @classmethod
    def lan(cls) -> "RpcConfig":
        return cls()

    @classmethod
    def for_tests(cls) -> "RpcConfig":
        return cls(default_timeout_s=30.0)
