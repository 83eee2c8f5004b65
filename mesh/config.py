"""One frozen configuration per layer, with named presets.

Units are in the field names. Tests pick a preset (``RpcConfig.for_tests()``) instead of
patching constants.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from mesh.gossip.config import GossipConfig
from mesh.jobs.config import JobSyncConfig
from mesh.routing.config import RoutingConfig
from mesh.rpc.config import RpcConfig
from mesh.rpc.faults import FaultConfig

__all__ = ["DEFAULT_HTTP_PORT", "DEFAULT_RPC_PORT", "GossipConfig", "JobSyncConfig", "PeerConfig", "RoutingConfig",
           "RpcConfig", "FaultConfig", "default_name"]


def default_name() -> str:
    return (socket.gethostname() or "peer")[:64]


DEFAULT_RPC_PORT = 7411
DEFAULT_HTTP_PORT = 7412


@dataclass(frozen=True)
class PeerConfig:
    data_dir: Path
    rpc_host: str = "127.0.0.1"  # interface the RPC socket binds
    rpc_port: int = DEFAULT_RPC_PORT  # 0 picks a free port
    model_path: Path | None = None  # None: the default model (SmolLM2-135M-Instruct)
    model_name: str | None = None  # the name to serve model_path under (default: from its file name)
    no_model: bool = False  # serve no model: route every prompt to other members (--no-model)
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
    faults: FaultConfig | None = None  # testing only: seeded loss/delay under gossip
    threshold: float = 0.7  # confidence below which a prompt entered here escalates
    jobs: bool = True  # keep a durable job store (jobs.db) and run its jobs
    jobs_keep_s: float = 7 * 24 * 3600.0  # finished jobs are kept this long ...
    jobs_max_bytes: int = 256 << 20  # ... and within this disk budget (jobs.db)
    jobs_max_open: int = 10_000  # jobs submitted here that may wait or run at once; more: busy
    jobsync: JobSyncConfig = field(default_factory=JobSyncConfig)
    extra_models: tuple[Path, ...] = ()  # more --model files, loaded on demand (mesh.inference.model_set)
    model_names: tuple[str, ...] = ()  # --model NAME: models of the model store to serve (the first may be primary)
    auto_pull: bool = False  # pull a named model this peer's store lacks from the peers that hold it
    models_ram_bytes: int | None = None  # memory budget of the models loaded at once (None: 80% of free RAM)
    session_cache_bytes: int = 256 << 20  # RAM for conversations' cached prompts, per engine; 0: off
    lend_bytes: int = 0  # memory lent to other peers' split models (--lend-memory; 0: none)
    keep_alive_s: float = 300.0  # an on-demand model idle this long is unloaded (unless pinned)
    models_max_bytes: int | None = None  # disk budget of the model store (None: the disk's free space)
    pull_rate: float = 0.0  # bytes/s a model pull may fetch (0: no cap)
    bulk_port: int | None = 0  # the bulk piece stream's port (0: any free one; None: off, pieces over RPC only)
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
    engine_parallel: int = 4  # requests the engine runs at once (llama-server -np, OLLAMA_NUM_PARALLEL)
    cert_skew_s: float = 300.0  # certificates are honoured this long before issue and past expiry (clocks differ)
    renew_at: float = 2 / 3  # renew this peer's certificate once this fraction of its lifetime has passed
    renew_check_s: float = 60.0  # how often the peer checks whether its certificate is due for renewal
    rpc: RpcConfig = field(default_factory=RpcConfig.lan)
    gossip: GossipConfig = field(default_factory=GossipConfig.lan)
    routing: RoutingConfig = field(default_factory=RoutingConfig.lan)

    def with_(self, **changes) -> "PeerConfig":
        return replace(self, **changes)
