"""One frozen configuration per layer, with named presets.

Units are in the field names. Tests pick a preset (``RpcConfig.for_tests()``) instead of
patching constants.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.faults import FaultConfig
    from mesh.jobsync import JobSyncConfig
    from mesh.gossip.config import GossipConfig
    from mesh.routing.config import RoutingConfig


def default_name() -> str:
    return (socket.gethostname() or "peer")[:64]


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


DEFAULT_RPC_PORT = 7411
DEFAULT_HTTP_PORT = 7412


def _routing_lan():
    from mesh.routing.config import RoutingConfig

    return RoutingConfig.lan()


def _jobsync_default():
    from mesh.jobsync import JobSyncConfig

    return JobSyncConfig()


def _gossip_lan():
    from mesh.gossip.config import GossipConfig

    return GossipConfig.lan()


@dataclass(frozen=True)
class PeerConfig:
    data_dir: Path
    rpc_host: str = "127.0.0.1"  # interface the RPC socket binds
    rpc_port: int = DEFAULT_RPC_PORT  # 0 picks a free port
    model_path: Path | None = None  # None: the default model (SmolLM2-135M-Instruct)
    n_ctx: int = 2048  # context window in tokens
    n_threads: int | None = None  # None: one per core
    queue_limit: int = 8  # requests that may wait for the model before "busy"
    shutdown_grace_s: float = 10.0  # in-flight requests get this long to finish on SIGTERM
    write_peer_file: bool = True  # advertise this peer to the local CLI via peer.json
    name: str = field(default_factory=default_name)  # shown in `mesh peers`; goes into the certificate
    join_token: str | None = None  # enrol with this token when in no mesh yet
    advertise: tuple[str, ...] = ()  # addresses others reach this peer at (default: interface IPs)
    seeds: tuple[str, ...] = ()  # "tcp://host:port[@KEY]" of peers to join where mDNS does not reach
    mdns: bool = True  # announce and browse _mesh._tcp.local.
    faults: "FaultConfig | None" = None  # testing only: seeded loss/delay under gossip
    threshold: float = 0.7  # confidence below which a prompt entered here escalates
    jobs: bool = True  # keep a durable job store (jobs.db) and run its jobs
    jobs_keep_s: float = 7 * 24 * 3600.0  # finished jobs are kept this long ...
    jobs_max_bytes: int = 256 << 20  # ... and within this disk budget (jobs.db)
    jobs_max_open: int = 10_000  # jobs submitted here that may wait or run at once; more: busy
    jobsync: "JobSyncConfig" = field(default_factory=lambda: _jobsync_default())
    http_host: str = "127.0.0.1"  # interface the HTTP API (OpenAI API, metrics, dashboard) binds
    http_port: int | None = None  # None: no HTTP server (mesh-peer's default is 7412); 0 picks a free port
    http_open_loopback: str = "auto"  # keyless API callers on this machine: auto (when bound to loopback), yes, no
    http_rate_per_s: float = 5.0  # API requests per second per key (or per address, keyless); 0: no limit
    http_burst: int = 20  # API requests a key may make at once before the rate applies
    cloud_url: str | None = None  # OpenAI-compatible API root for the last rung (key: MESH_CLOUD_API_KEY)
    cloud_model: str | None = None
    engine_url: str | None = None  # serve through this OpenAI-compatible engine instead of llama.cpp
    engine_model: str | None = None
    engine_context: int = 8192  # the engine model's context length, in tokens
    cert_skew_s: float = 300.0  # certificates are honoured this long before issue and past expiry (clocks differ)
    renew_at: float = 2 / 3  # renew this peer's certificate once this fraction of its lifetime has passed
    renew_check_s: float = 60.0  # how often the peer checks whether its certificate is due for renewal
    rpc: RpcConfig = field(default_factory=RpcConfig.lan)
    gossip: "GossipConfig" = field(default_factory=lambda: _gossip_lan())
    routing: "RoutingConfig" = field(default_factory=lambda: _routing_lan())

    def with_(self, **changes) -> "PeerConfig":
        return replace(self, **changes)
