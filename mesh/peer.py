"""The composition root: build one peer from a ``PeerConfig`` and run it.

Start order: data dir -> identity and transport keys (created on first start, 0600) ->
trust (own key, the local CLI's key, the trust file) -> mesh membership (``mesh.json``;
enrol with a join token, or create a single-device mesh; a certificate that does not
name this peer's transport key is renewed here when this device holds the authority,
refused otherwise) -> backend (loads the model) -> RPC server (CurveZMQ; keys: own,
trust file, certificates of this mesh's authority; each frame bound to the transport
key its certificate names) -> peer file (``peer.json``, so the local CLI finds this
peer) -> "ready" line.

Then gossip (SWIM over the RPC server, joining through ``--join`` seeds and remembered
peers) and mDNS discovery start.

With ``config.http_port`` set, the HTTP server (mesh.http) starts last, before the peer
file is written.

Shutdown order (``stop``): remove the peer file (no new local callers) -> stop the HTTP
server -> stop the job runner (a job in flight goes back to the queue) and the job sync
(handovers and deliveries) -> stop mDNS ->
announce "left" and stop gossip -> the RPC server
stops taking calls and gives in-flight ones ``shutdown_grace_s`` to finish, then cancels
them with a ``cancelled`` error to their callers -> the backend stops -> sockets close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq.asyncio

from mesh import tracing
from mesh.clock import SYSTEM, Clock
from mesh.config import PeerConfig
from mesh.discovery.netaddr import advertise_endpoints
from mesh.discovery.seeds import RememberedPeers, split_seed_text
from mesh.errors import CertificateError, ConfigError, InvalidRequest, MeshError, ModelNotFound, PeerUnavailable
from mesh.gossip.service import Membership
from mesh.gossip.view import PeerMeta
from mesh.http.metrics import PeerMetrics, entered
from mesh.identity.bootstrap import (
    initial_keybook,
    join_or_create_mesh,
    join_token_for,
    renew_for_transport,
    seed_addresses,
)
from mesh.identity.credentials import CertificateVerifier, MeshKeys
from mesh.identity.enrolment import ENROL_METHOD
from mesh.identity.joining import serve_enrolment
from mesh.identity.keys import Identity, peer_id_text, public_raw
from mesh.identity.membership import MeshMembership
from mesh.identity.peerkeys import PeerKeys
from mesh.identity.renewal import RENEW_METHOD
from mesh.identity.renewal_service import Renewer, holds_authority, serve_renewal
from mesh.identity.revocation import RevocationList, load_revocations
from mesh.identity.revocation_service import RevocationService
from mesh.identity.rotation import ROTATE_METHOD, RotationJournal
from mesh.identity.rotation_service import (
    ROTATE_LOCAL_METHOD,
    certify_new_keys,
    install_rotation,
    resume_rotation,
    serve_rotation,
)
from mesh.identity.transport import TransportKeys, derived_public, key_text
from mesh.identity.trust import TrustStore
from mesh.inference import capabilities
from mesh.inference.backend import Backend
from mesh.jobs import JobStore
from mesh.jobs.runner import JobRunner
from mesh.jobs.sync import JobSync
from mesh.models.bulk import BulkServer
from mesh.models.bulk_wire import BulkGrants
from mesh.models.service import ModelService, model_counts
from mesh.models.store import ModelStore
from mesh.paths import DataDir
from mesh.peerfile import PeerAddress, remove_peer_file, write_peer_file
from mesh.routing.router import Router
from mesh.routing.successors import Successors
from mesh.rpc.codec import FrameCodec
from mesh.rpc.faults import FaultInjector
from mesh.rpc.pool import PeerPool
from mesh.rpc.server import CallContext, RpcServer, unary
from mesh.rpc.tasks import Background
from mesh.service import PeerService

log = logging.getLogger("mesh.peer")


def load_backend(config: PeerConfig) -> Backend:
    """The default engine: llama.cpp in an engine process of its own, supervised by this
    peer, on ``config.model_path`` (or the default model); or, with ``engine_url``, an
    OpenAI-compatible engine this device runs. The engine process is started by
    ``Peer.start`` (``EngineBackend.start``)."""
    if config.no_model or (config.model_path is None and config.model_names):
        # --no-model; or the first --model names a store model not there yet (--auto-pull)
        from mesh.inference.no_model import NoModel

        return NoModel(queue_limit=config.queue_limit)
    if config.engine_url:
        from mesh.inference.openai_backend import OpenAIBackend

        return OpenAIBackend(
            config.engine_url, config.engine_model or "", context_length=config.engine_context,
            max_concurrency=config.engine_parallel, queue_limit=config.queue_limit,
        )
    from mesh.inference.models import default_model_path

    return engine_backend(config, Path(config.model_path) if config.model_path else default_model_path(),
                          config.model_name)


def engine_backend(config: PeerConfig, path: Path, name: str | None,
                   prepare: Callable[[], list[str]] | None = None) -> Backend:
    """A llama.cpp engine process for one model file, as ``config`` sets them up (the
    first model, and each one loaded on demand); ``name``: the name it answers under
    (None: from the file name); ``prepare``: a split model's planner (issue 16)."""
    from mesh.inference.cpu_variant import default_threads
    from mesh.inference.engine_backend import EngineBackend
    from mesh.inference.session_cache import SessionCacheConfig

    return EngineBackend(
        path, n_ctx=config.n_ctx, n_threads=config.n_threads or default_threads(), queue_limit=config.queue_limit,
        model_name=name, session_cache=SessionCacheConfig(budget_bytes=config.session_cache_bytes),
        prepare=prepare,
    )


def enrol_local_client(data: DataDir, trust: TrustStore) -> Identity:
    """The CLI on this machine signs with ``client.key``; make sure this peer trusts it."""
    client, _ = Identity.load_or_create(data.client_key)
    trust.add(client.public_raw, "local-cli")
    return client


class Peer:
    def __init__(
        self,
        config: PeerConfig,
        *,
        backend: Backend | None = None,
        backend_factory: Callable[[PeerConfig], Backend] = load_backend,
        cloud: Backend | None = None,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` and ``rng`` reach every part that keeps time or draws at random (gossip,
        routing, jobs, renewal, revocations, rotation): a test passes a ``ManualClock`` and
        a seeded ``random.Random`` to run whole peers in virtual time, reproducibly."""
        self.config = config
        self.data = DataDir(Path(config.data_dir))
        self._backend = backend
        self._backend_factory = backend_factory
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._background = Background("peer")  # work of the peer itself: the key switch of a rotation
        self.identity: Identity | None = None
        self.server: RpcServer | None = None
        self.endpoint: str | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._stopped = False
        self.membership: MeshMembership | None = None
        self.membership_service: Membership | None = None
        self.revocation_service: RevocationService | None = None
        self.renewer: Renewer | None = None
        self.discovery = None
        self.pool: PeerPool | None = None
        self.router: Router | None = None
        self.jobs: JobStore | None = None
        self.models: ModelStore | None = None  # the model store (mesh.models), kept across rotations
        self._extra_servable: list | None = None
        self._to_pull: list[str] = []  # --model NAMEs the store lacks, for --auto-pull
        self.model_service: ModelService | None = None
        self.model_counts = model_counts()  # the model service's counters, kept across mesh rotate
        self.bulk: BulkServer | None = None  # the bulk piece stream pulls from this peer use
        self.lending = None  # mesh.inference.lending.LendingService with --lend-memory
        self.splitter = None  # mesh.inference.borrowing.SplitPlanner when the first model is too big for this peer
        self.job_runner: JobRunner | None = None
        self.job_sync: JobSync | None = None
        self.http = None  # mesh.http.HttpServer when config.http_port is set
        self.metrics = PeerMetrics(clock=clock)  # this peer's own Prometheus registry and recent requests
        self.http_url: str | None = None
        self._rotation: asyncio.Task | None = None  # the switch to new keys (rotate), while it runs (in _background)
        self.service: PeerService | None = None
        self.rotations = 0
        self.successors = Successors()  # members that rotated their keys: old id -> new id
        self.last_rotation: dict[str, Any] | None = None
        self._cloud = cloud
        if cloud is None and config.cloud_url and config.cloud_model:
            from mesh.inference.openai_backend import OpenAIBackend

            # the key is read from the environment only, and never logged or gossiped
            self._cloud = OpenAIBackend(
                config.cloud_url, config.cloud_model, api_key=os.environ.get("MESH_CLOUD_API_KEY") or None
            )

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "peer not started"
        return self._backend

    @property
    def clock(self) -> Clock:
        """The clock every part of this peer keeps time by."""
        return self._clock

    async def start(self) -> str:
        """Bring the peer up; returns the RPC endpoint it serves on."""
        if not 0.5 <= self.config.renew_at < 1:
            raise ConfigError(f"renew_at must be in [0.5, 1), got {self.config.renew_at}")
        self.data.ensure()
        await self._background.start()
        rotation = resume_rotation(self.data)  # a `mesh rotate` interrupted after the authority answered
        self.identity, created = Identity.load_or_create(self.data.identity_key)
        if created:
            log.info("created identity %s in %s", self.identity.peer_id_text, self.data.identity_key)
        # OpenTelemetry traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT says where (mesh.tracing)
        tracing.setup_from_env(service_name="mesh-peer", attributes={
            "service.instance.id": self.identity.peer_id_text, "mesh.peer.name": self.config.name or ""})
        self.transport, created = TransportKeys.load_or_create(self.data.transport_key)
        if created:
            log.info("created transport key %s in %s", self.transport.public_text, self.data.transport_key)
        self._ctx = zmq.asyncio.Context()
        try:
            self.membership = await join_or_create_mesh(
                self.data, self.identity, self.transport, name=self.config.name, join_token=self.config.join_token,
                ctx=self._ctx, rpc=self.config.rpc, clock=self._clock,
            )
            self.certificate = self.membership.verify(peer_public_raw=self.identity.public_raw, now=self._clock())
            if self.certificate.curve_public != self.transport.public:
                self.membership = renew_for_transport(
                    self.data, self.membership, self.certificate, self.identity, self.transport, now=self._clock()
                )
                self.certificate = self.membership.verify(peer_public_raw=self.identity.public_raw, now=self._clock())
            self.models = ModelStore(self.data.models_dir, max_bytes=self.config.models_max_bytes)
            self._named_models()
            if self._backend is None:
                self._backend = self._with_models(await self._first_backend())
            start_engine = getattr(self._backend, "start", None)
            if start_engine is not None:  # an engine process: up, or running without a model and saying why
                await start_engine()
        except BaseException:
            if self.models is not None:
                self.models.close()
                self.models = None
            self._ctx.term()
            raise

        self.revocations = RevocationList(self.membership.authority_public, skew_s=self.config.cert_skew_s)
        try:
            load_revocations(self.data.revocations, self.revocations, now=self._clock())
            own = self.revocations.revocation_for(self.certificate)
            if own is not None:
                raise CertificateError(
                    f"the mesh authority revoked this peer's certificate (at {own.revoked_at}); other members "
                    f"refuse it. To take part again, move {self.data.membership} and {self.data.revocations} "
                    "away and join with a new token from `mesh invite`"
                )
            self.verifier = CertificateVerifier(
                self.membership.authority_public, skew_s=self.config.cert_skew_s, revocations=self.revocations,
                on_successor=self._on_successor,
            )
            remembered = RememberedPeers.load(self.data.known_peers)
            token = join_token_for(self.config.join_token, self.membership)
            self.keybook = initial_keybook(self.config.seeds, token)
            seeds = seed_addresses(self.config.seeds, self.keybook, token, remembered, now=self._clock())
            if self.config.jobs:
                self.jobs = JobStore(self.data.jobs_db, local_peer=self.identity.peer_id_text, clock=self._clock)
                if rotation is not None:  # the switch was interrupted: own jobs follow the new id
                    self.jobs.rename_peer(rotation.old_peer_id_text, self.identity.peer_id_text)
            if self.config.lend_bytes:
                from mesh.inference.lending import LendingService

                self.lending = LendingService(
                    offer_bytes=self.config.lend_bytes, cache_dir=self.data.root / "ggml-cache",
                    transport=self.transport, members=lambda: self.membership_service.view()
                    if self.membership_service is not None else [],
                    refuse_key=self.verifier.transport_revoked, threads=self.config.n_threads, clock=self._clock)
            if self.models is not None and self.config.bulk_port is not None:
                self.bulk = BulkServer(grants=BulkGrants(self._clock), counts=self.model_counts,
                                       revoked=lambda peer: self.revocations.revokes_peer(peer))
                try:
                    self.bulk.start(self.config.rpc_host, self.config.bulk_port)
                except OSError as e:
                    raise ConfigError(f"cannot listen for the bulk piece stream on {self.config.rpc_host} port "
                                      f"{self.config.bulk_port}: {e.strerror or e}; pick another --bulk-port "
                                      "(0: any free one)") from None
            await self._start_stack(f"tcp://{self.config.rpc_host}:{self.config.rpc_port}", seeds, remembered)
            if self.lending is not None:
                await self.lending.start(self.config.rpc_host)
        except BaseException:
            if self.bulk is not None:
                self.bulk.close()
            if self.lending is not None:
                await self.lending.aclose()
            await self._backend.aclose()
            if self.jobs is not None:
                self.jobs.close()
            if self.models is not None:
                self.models.close()
            self._ctx.term()
            raise
        self.metrics.attach(self)
        if self.config.http_port is not None:
            from mesh.http import HttpServer

            self.http = HttpServer(self, host=self.config.http_host, port=self.config.http_port)
            self.http_url = await self.http.start()
            log.info("HTTP API, metrics and dashboard at %s", self.http_url)
        if self.config.write_peer_file:
            self._write_peer_file()
        caps = self._backend.capabilities
        log.info(
            "mesh-peer ready: peer %s (%s) at %s, mesh %s, model %s (%s, ctx %d, %.1f tok/s), data dir %s",
            self.identity.peer_id_text, self.config.name, self.endpoint, self.membership.mesh_id_text, caps.model,
            caps.quantisation or "?", caps.context_length, caps.tokens_per_s, self.data.root,
        )
        if self._cloud is not None:
            cloud = self._cloud.capabilities
            log.info("cloud escalation: %s at %s", cloud.model, cloud.extra.get("endpoint", "?"))
        if rotation is not None:
            self._publish_rotation(rotation)
        if self._to_pull:
            self._background.spawn(self._auto_pull(), name="auto-pull")
        self._background.spawn(self._add_missing_chains(), name="model-chains")
        return self.endpoint

    async def _add_missing_chains(self) -> None:
        if self.models is not None and (n := await asyncio.to_thread(self.models.add_missing_chains)):
            log.info("gave %d stored model(s) their SHA-256 chain (pulls from here read each byte once)", n)

    async def _start_stack(
        self, bind: str, seeds: list[str], remembered: RememberedPeers | None, *, bind_retry_s: float = 0.0,
    ) -> None:
        """Everything that speaks for this peer's identity: the RPC server (bound to
        ``bind``), gossip, revocations, renewal, the connection pool, the router, job
        sync and the job runner, mDNS. Built again by ``rotate`` with the new keys; the
        backend, the job store, the HTTP server and the metrics stay."""
        assert self.identity is not None and self.membership is not None
        trust = TrustStore(self.data.trust_file, own_public_raw=self.identity.public_raw)
        enrol_local_client(self.data, trust)
        verifier = self.verifier
        self.keys = PeerKeys(
            MeshKeys(self.identity.public_raw, trust=trust, certificates=verifier), certificates=verifier
        )
        codec = FrameCodec(
            self.identity, self.keys, config=self.config.rpc, clock=self._clock,
            credential=self.membership.certificate, credentials=self.keys.certified_peer,
        )
        self._codec = codec
        is_local = lambda sender: trust.key_for(sender) is not None  # noqa: E731 - this machine's CLI
        # Bound first (its port goes into this peer's member record); its method table is
        # filled once, below, before anyone learns this address (gossip and mDNS start last).
        self.server = RpcServer(
            codec=codec, methods={}, config=self.config.rpc, ctx=self._ctx, authenticated=self.keys.authenticated,
            curve=self.transport, transport_ok=_transport_binding(verifier, trust),
            refuse_transport=verifier.transport_revoked,
        )
        bound = await self.server.start(bind, retry_s=bind_retry_s)
        self.endpoint = _reachable(bound)
        port = int(bound.rsplit(":", 1)[1])
        self.advertise = advertise_endpoints(self.config.rpc_host, port, explicit=self.config.advertise)
        self.membership_service = Membership(
            identity=self.identity, name=self.config.name, certificate=self.membership.certificate,
            addresses=self.advertise, verifier=verifier, codec=codec, ctx=self._ctx, cfg=self.config.gossip,
            meta=self._own_meta,
            remembered=remembered, clock=self._clock, rng=self._child_rng(),
            faults=FaultInjector(self.config.faults) if self.config.faults and self.config.faults.active else None,
            transport=self.transport, keybook=self.keybook, successor=self.successors.current,
        )
        self.revocation_service = RevocationService(
            revocations=self.revocations, path=self.data.revocations, verifier=verifier,
            membership=self.membership_service, authority_key=self.data.authority_key,
            self_id=self.identity.peer_id, is_local=is_local,
            interval_s=self.config.gossip.reconnect_interval_s, clock=self._clock, rng=self._child_rng(),
        )
        self.pool = PeerPool(codec=codec, ctx=self._ctx, transport=self.transport, keybook=self.keybook)
        self.router = Router(
            self_id=self.identity.peer_id_text, backend=self._backend, membership=self.membership_service,
            pool=self.pool, cloud=self._cloud, cfg=self.config.routing, clock=self._clock, rng=self._child_rng(),
            observer=self.metrics, successors=self.successors,
            fetch_model=self._fetch_for_prompt if self.config.auto_pull else None,
        )
        self.renewer = Renewer(
            data=self.data, membership=self.membership, certificate=self.certificate,
            members=self.membership_service, pool=self.pool, on_renewed=self._renewed,
            fraction=self.config.renew_at, check_s=self.config.renew_check_s, skew_s=self.config.cert_skew_s,
            clock=self._clock, rng=self._child_rng(),
        )
        if self.jobs is not None:
            self.job_sync = JobSync(
                store=self.jobs, membership=self.membership_service, pool=self.pool,
                self_id=self.identity.peer_id_text, reservations=self.router.reservations,
                cfg=self.config.jobsync, clock=self._clock, on_new_job=lambda: self.job_runner.wake(),
            )
            self.job_runner = JobRunner(
                store=self.jobs, router=self.router, self_id=self.identity.peer_id_text,
                threshold=self.config.threshold, clock=self._clock, sync=self.job_sync,
                keep_s=self.config.jobs_keep_s, max_bytes=self.config.jobs_max_bytes,
            )
        previous = self.service  # built again (mesh rotate): uptime and counts are the process's
        self.service = PeerService(
            backend=self._backend, peer_id=self.identity.peer_id_text, codec=codec, server=lambda: self.server,
            clock=self._clock, name=self.config.name, mesh=self.membership.mesh_id_text,
            threshold=self.config.threshold, transport_key=self.transport.public_text, router=self.router,
            jobs=self.jobs, on_submit=self.job_runner.wake if self.job_runner is not None else None,
            job_sync=self.job_sync, max_open_jobs=self.config.jobs_max_open, certificate_info=self._certificate_info,
            started_at=previous._started if previous is not None else None,
            answers=previous.answers if previous is not None else 0, memory_pool=self._memory_pool,
        )
        self.model_service = ModelService(
            store=self.models, identity=self.identity, members=self.membership_service, pool=self.pool,
            is_local=is_local, loaded=self._loaded_models, clock=self._clock, pull_rate=self.config.pull_rate,
            counts=self.model_counts, bulk=self.bulk,
        )
        self.server.methods.update({
            **self.service.methods(), **self.model_service.methods(), ENROL_METHOD: serve_enrolment(self.data, clock=self._clock),
            RENEW_METHOD: serve_renewal(self.data, verifier, clock=self._clock),
            ROTATE_METHOD: serve_rotation(self.data, verifier, clock=self._clock),
            ROTATE_LOCAL_METHOD: unary(self._serve_rotate_local(is_local)),
            **self.membership_service.methods(), **self.revocation_service.methods(),
            **(self.job_sync.methods() if self.job_sync is not None else {}),
            **(self.lending.methods() if self.lending is not None else {}),
        })
        if self.job_runner is not None:
            with entered("job"):  # the runner's task (and the prompts it routes) count as entry "job"
                await self.job_runner.start()
            await self.job_sync.start()
        await self.membership_service.start(seeds)
        await self.revocation_service.start()
        await self.renewer.start()
        if self.config.mdns:
            await self._start_mdns(port)

    async def _stop_stack(
        self, grace: float, *, drain_jobs_s: float = 0.0, close_pool: bool = True, leave_meta: PeerMeta | None = None,
    ) -> None:
        """Stop what ``_start_stack`` started, in order: the job runner (a job in flight
        gets ``drain_jobs_s`` to finish, then goes back to the queue) and job sync, mDNS,
        renewal, revocations, gossip (announcing "left"), then the RPC server (in-flight
        calls get ``grace``), then the connection pool unless ``close_pool`` is False."""
        if self.job_runner is not None:
            await self.job_runner.stop(drain_s=drain_jobs_s)
        if self.job_sync is not None:
            await self.job_sync.stop()
        if self.discovery is not None:
            await self.discovery.aclose()
            self.discovery = None
        if self.renewer is not None:
            await self.renewer.stop()
        if self.revocation_service is not None:
            await self.revocation_service.stop()
        if self.membership_service is not None:
            await self.membership_service.stop(leave_meta=leave_meta)
        if self.server is not None:
            n = self.server.in_flight
            if n:
                log.info("waiting up to %gs for %d request(s) in flight", grace, n)
            await self.server.close(grace_s=grace)
        if self.pool is not None and close_pool:
            await self.pool.aclose()

    # -- key rotation (mesh rotate) ----------------------------------------------------------

    def _serve_rotate_local(self, is_local: Callable[[bytes], bool]):
        async def rotate(args: dict, ctx: CallContext) -> dict:
            if not is_local(ctx.sender):
                raise InvalidRequest("peer.rotate is for the mesh CLI on this peer's machine")
            return await self.rotate()

        return rotate

    async def rotate(self) -> dict[str, Any]:
        """Roll this peer's identity and transport keys without stopping it.

        First (the caller waits): new keys, journalled in ``rotation.json`` before anything
        leaves; the authority (this data dir's key, or a member holding it) certifies them
        under the same name as this peer's successor and hands back the revocation of the
        old key. Then (``_switch``, in the background) the peer changes over; the returned
        summary names the old and the new peer id."""
        if self._rotation is not None and not self._rotation.done():
            raise InvalidRequest("a key rotation is already under way on this peer")
        if self._stopped:
            raise InvalidRequest("this peer is stopping")
        assert self.identity is not None and self.membership is not None
        journal, cert = await certify_new_keys(
            self.data, identity=self.identity, membership=self.membership, certificate=self.certificate,
            members=self.membership_service, pool=self.pool, now=self._clock(), skew_s=self.config.cert_skew_s,
            rng=self._child_rng(),
        )
        old = self.identity.peer_id_text
        self._rotation = self._background.spawn(self._switch(journal), name="rotate-switch")
        return {
            "old_peer_id": old, "peer_id": cert.peer_id_text, "name": cert.name,
            "transport_key": key_text(cert.curve_public), "expires_at": cert.expires_at,
        }

    async def _switch(self, journal: RotationJournal) -> None:
        """Change over to the journal's keys. Order: the new keys go to disk; the old
        stack stops taking work (gossip says "left" under the old id, the job runner
        finishes the job in flight, calls in flight get ``shutdown_grace_s``); a new stack
        binds the same port with the new keys and joins the members the old one knew;
        prompts still streaming through the old router finish on its connections (signed
        by the old key, still valid); then the old key's revocation goes out. The backend,
        the job store, the HTTP server and the metrics carry on throughout; HTTP requests
        that arrive during the change are served by the old router until the new one is
        in place."""
        t0 = time.monotonic()
        grace = self.config.shutdown_grace_s
        old_id = self.identity.peer_id_text
        try:
            seeds = list(dict.fromkeys([*self.membership_service.live_addresses().values(),
                                        *(split_seed_text(s)[0] for s in self.config.seeds)]))
            port = int(self.endpoint.rsplit(":", 1)[1])
            old_router, old_pool = self.router, self.pool
            self.membership = install_rotation(self.data, journal, seeds=self.membership.seeds)
            if self.job_runner is not None:  # the job in flight finishes while this peer is still routable
                await self.job_runner.stop(drain_s=grace)
            left_at = time.monotonic()
            # the last record under the old id says "left, rotating": routers wait for the new id
            leave_meta = replace(self._own_meta(), rotating=True)
            await self._stop_stack(grace, close_pool=False, leave_meta=leave_meta)
            self.identity, self.transport = journal.identity, journal.transport
            self.certificate = self.membership.verify(peer_public_raw=self.identity.public_raw, now=self._clock())
            if self.jobs is not None:
                self.jobs.rename_peer(old_id, self.identity.peer_id_text)
            await self._start_stack(f"tcp://{self.config.rpc_host}:{port}", seeds,
                                    RememberedPeers.load(self.data.known_peers), bind_retry_s=5.0)
            self.router.rename_peer(old_id, self.identity.peer_id_text)
            away = time.monotonic() - left_at
            if self.config.write_peer_file:
                self._write_peer_file()
            switched = time.monotonic() - t0
            deadline = time.monotonic() + grace
            while old_router.active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await old_pool.aclose()
            self._publish_rotation(journal)
        except Exception:
            # the new keys are on disk and the journal is kept: a restart comes up with them
            # and publishes the revocation
            log.exception("key rotation failed while switching to the new keys; restart mesh-peer to finish it")
            raise
        self.rotations += 1
        self.last_rotation = {"switch_s": round(switched, 3), "away_s": round(away, 3), "old_peer_id": old_id}
        log.info("keys rotated: peer %s is now %s (transport key %s); switched in %.2fs, of which %.2fs away "
                 "from routing", old_id[:12], self.identity.peer_id_text, self.transport.public_text, switched, away)

    def _publish_rotation(self, journal: RotationJournal) -> None:
        """Spread the old key's revocation (every member refuses it from then on) and
        close the journal."""
        if self.revocation_service is not None and journal.revocation:
            self.revocation_service.accept([journal.revocation], push_to_all=True)
        self.data.rotation_journal.unlink(missing_ok=True)

    def _on_successor(self, cert) -> None:
        """A certificate naming a predecessor arrived (a member ran ``mesh rotate``): its
        jobs and sessions follow it to its new id."""
        old, new = peer_id_text(cert.predecessor_id), cert.peer_id_text
        moved = self.jobs.rename_peer(old, new) if self.jobs is not None else 0
        if self.router is not None:
            self.router.rename_peer(old, new)
        log.info("member %s rotated its keys: now %s%s", old[:12], new[:12],
                 f" ({moved} job record(s) follow it)" if moved else "")

    def _certificate_info(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "issued_at": cert.issued_at, "expires_at": cert.expires_at, "serial": cert.serial.hex(),
            "predecessor": peer_id_text(cert.predecessor_id) if cert.predecessor_id else None,
            "renews_at": cert.issued_at + self.config.renew_at * (cert.expires_at - cert.issued_at),
            "rotations": self.rotations,
        }

    def _renewed(self, membership: MeshMembership, cert) -> None:
        """A renewed certificate (already saved in mesh.json): present it from now on."""
        self.membership, self.certificate = membership, cert
        self._codec.credential = cert.to_bytes()
        self.membership_service.update_credential(cert.to_bytes())

    async def _start_mdns(self, port: int) -> None:
        from mesh.discovery.mdns import MdnsDiscovery

        assert self.identity is not None and self.membership_service is not None
        hosts = [a.removeprefix("tcp://").rsplit(":", 1)[0] for a in self.advertise]
        ipv4 = [h for h in hosts if _is_ipv4(h) and not h.startswith("127.")]  # mDNS here is IPv4 only
        self.discovery = MdnsDiscovery(
            peer_id=self.identity.peer_id_text, mesh=self.membership.mesh_id_text, port=port,
            on_hint=self.membership_service.hint, interfaces=ipv4 or None, transport_key=self.transport.public_text,
        )
        try:
            await self.discovery.start()
        except MeshError as e:  # mDNS is a convenience: --join still works without it
            log.warning("mDNS discovery unavailable (%s); reach other peers with --join HOST:PORT", e)
            self.discovery = None

    def _child_rng(self) -> random.Random:
        """An rng of its own for one part, drawn from the peer's (reproducible when that is seeded)."""
        return random.Random(self._rng.getrandbits(64))

    def _named_models(self) -> None:
        """``--model NAME``: a model of the store. The first one, found, is the primary (loaded
        at start); one the store lacks is an error, unless ``--auto-pull`` fetches it."""
        assert self.models is not None
        missing = []
        for i, name in enumerate(self.config.model_names):
            try:
                found = self.models.resolve(name)
            except ModelNotFound:
                missing.append(name)
                continue
            if i == 0 and self.config.model_path is None:  # the first --model was this name
                self.config = self.config.with_(model_path=self.models.path(found.sha), model_name=found.name)
        if missing and not self.config.auto_pull:
            raise ConfigError(f"no model {', '.join(map(repr, missing))} in this peer's model store; "
                              "`mesh models pull NAME` fetches one from the mesh, or start with --auto-pull")
        self._to_pull = missing

    async def _auto_pull(self) -> None:
        """Fetch the named models the store lacks, retrying while no member holds them; the
        model set serves each once it is in the store."""
        pending, delay = list(self._to_pull), 2.0
        while pending:
            for name in list(pending):
                try:
                    result = await self.model_service.fetch(name)
                    log.info("auto-pull: %s is here (%d bytes in %.1f s)", name, result.bytes_fetched, result.seconds)
                    pending.remove(name)
                except ModelNotFound:
                    log.info("auto-pull: no member holds %s yet; trying again in %.0f s", name, delay)
                except MeshError as e:
                    log.warning("auto-pull of %s: %s; trying again in %.0f s", name, e, delay)
            if pending:
                await self._clock.sleep(delay)
                delay = min(2 * delay, 60.0)

    async def _fetch_for_prompt(self, name: str) -> bool:
        """--auto-pull: a prompt pins model ``name`` that no member serves; pull it into
        this peer's store from a member that holds it (the model set then serves it).
        False when no member has it."""
        if self.models is not None:
            try:
                self.models.resolve(name)
                return True  # here already (another prompt's pull just finished)
            except ModelNotFound:
                pass
        try:
            result = await self.model_service.fetch(name)
        except ModelNotFound:
            return False
        except InvalidRequest:  # a pull of it is running already (another prompt's): wait for it
            for _ in range(600):
                await self._clock.sleep(1.0)
                try:
                    self.models.resolve(name)
                    return True
                except ModelNotFound:
                    continue
            return False
        except MeshError as e:
            log.warning("auto-pull of %s for a prompt failed: %s", name, e)
            return False
        log.info("auto-pull: %s is here for a prompt (%d bytes in %.1f s)", name, result.bytes_fetched, result.seconds)
        return True

    def _memory_pool(self) -> dict | None:
        """What this peer lends (--lend-memory) and where its split model's layers are
        (``mesh status``, ``/v1/mesh``), or None when it does neither."""
        if self.lending is None and self.splitter is None:
            return None
        out: dict = {}
        if self.lending is not None:
            out["lending"] = self.lending.status()
        if self.splitter is not None:
            sp = self.splitter
            out["split"] = {"model": sp.path.name, "layers": [p.to_wire() for p in sp.layout], "plans": sp.plans,
                            "problem": sp.last_problem, "budget_mb": sp.budget_bytes >> 20,
                            "file_mb": sp.file_bytes >> 20, "tunnels": sp.tunnel_stats()}
        return out

    def _models_ram(self) -> int:
        """The memory budget of the models loaded at once (--models-ram; default 80% of the
        RAM free now)."""
        ram = self.config.models_ram_bytes
        if ram is None:
            import psutil

            ram = int(psutil.virtual_memory().available * 0.8)
        return ram

    async def _first_backend(self) -> Backend:
        """The first model's backend. A model file bigger than --models-ram is split across
        lenders (mesh.inference.borrowing): its engine starts once a plan holds."""
        from mesh.inference.borrowing import needs_split

        c = self.config
        if self._backend_factory is load_backend and not c.no_model and not c.engine_url and c.model_path \
                and needs_split(Path(c.model_path), self._models_ram()):
            from mesh.inference.borrowing import SplitPlanner
            from mesh.inference.lending import engine_build

            self.splitter = SplitPlanner(
                path=Path(c.model_path), budget_bytes=self._models_ram(),
                self_id=lambda: self.identity.peer_id_text if self.identity else None, self_name=c.name or "",
                members=lambda: self.membership_service.view() if self.membership_service is not None else None,
                rtts=lambda: self.membership_service.rtts() if self.membership_service is not None else {},
                call=self._call_member, transport=self.transport, loop=asyncio.get_running_loop(),
                build=engine_build())
            log.info("%s is bigger than --models-ram (%.2f GB): it will be split across lenders",
                     Path(c.model_path).name, self._models_ram() / 1e9)
            return engine_backend(c, Path(c.model_path), c.model_name, prepare=self.splitter.prepare)
        return await asyncio.to_thread(self._backend_factory, c)

    async def _call_member(self, address: str, method: str, args: dict, timeout_s: float) -> dict:
        if self.pool is None:
            raise PeerUnavailable("this peer is not serving yet")
        return await self.pool.client(address).call(method, args, timeout_s=timeout_s)

    def _with_models(self, backend: Backend) -> Backend:
        """A llama.cpp engine serves more than its first model: the other --model files and
        the model store's, on demand (mesh.inference.model_set)."""
        if getattr(backend, "model_path", None) is None and not self.config.model_names:
            return backend  # --no-model, --engine-url, or a backend given by a test
        from mesh.inference.model_set import ModelSet

        return ModelSet(backend, catalog=self._servable_models,
                        factory=lambda path, name: engine_backend(self.config, path, name), ram_bytes=self._models_ram(),
                        keep_alive_s=self.config.keep_alive_s, clock=self._clock)

    def _servable_models(self) -> list:
        from mesh.inference.model_set import Servable
        from mesh.inference.models import model_info, read_gguf_metadata

        n_ctx = self.config.n_ctx  # what an engine runs them with
        if self._extra_servable is None:  # the extra --model files' headers, read once
            self._extra_servable = []
            for path in self.config.extra_models:
                try:
                    info = model_info(read_gguf_metadata(path), path)
                except MeshError as e:
                    log.warning("not serving %s: %s", path, e)
                    continue
                self._extra_servable.append(Servable(
                    name=info.name, path=Path(path), size=Path(path).stat().st_size, parameters=info.parameters,
                    quantisation=info.quantisation, context_length=min(info.context_length or n_ctx, n_ctx)))
        out = list(self._extra_servable)
        if self.models is not None:
            for m in self.models.list():
                out.append(Servable(name=m.name, path=self.models.path(m.sha), size=m.size,
                                    parameters=m.card.parameters, quantisation=m.card.quantisation,
                                    context_length=min(m.card.context_length or n_ctx, n_ctx), pinned=m.pinned))
        return out

    def _loaded_models(self) -> list[str]:
        several = getattr(self.backend, "models_info", None)
        if several is not None:
            return [m.name for m in several() if m.loaded]
        model = self.backend.capabilities.model
        return [model] if model else []

    def _own_meta(self) -> PeerMeta:
        """What this peer gossips about itself (refreshed about once a second)."""
        meta = capabilities.snapshot(self.backend, renew=holds_authority(self.data))
        if self.lending is not None or self.splitter is not None:
            meta = replace(meta, lend=self.lending.info() if self.lending is not None else None,
                           split=self.splitter.layout if self.splitter is not None else ())
        return meta

    def _write_peer_file(self) -> None:
        assert self.identity is not None
        write_peer_file(self.data, PeerAddress(
            endpoint=self.endpoint, public_raw=self.identity.public_raw, peer_id=self.identity.peer_id_text,
            pid=os.getpid(), advertise=tuple(self.advertise), transport_public=self.transport.public,
            extra={"model": self.backend.capabilities.model, "mesh_id": self.membership.mesh_id_text,
                   "name": self.config.name, "started": self._clock(), "http": self.http_url},
        ))

    def _remove_peer_file(self) -> None:
        remove_peer_file(self.data, pid=os.getpid(), endpoint=self.endpoint)

    async def stop(self, *, grace_s: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self._rotation is not None:  # let a key switch under way finish: half a switch is worse
            await asyncio.wait({self._rotation}, timeout=2 * grace + 10)
        await self._background.close()
        if self.config.write_peer_file:
            self._remove_peer_file()
        if self.http is not None:
            await self.http.stop()
        await self._stop_stack(grace)
        if self._backend is not None:
            await self._backend.aclose()
        if self.splitter is not None:
            await self.splitter.release()
        if self.lending is not None:
            await self.lending.aclose()
        if self.bulk is not None:
            self.bulk.close()
        if self._cloud is not None:
            await self._cloud.aclose()
        if self.jobs is not None:
            self.jobs.close()
        if self.models is not None:
            self.models.close()
        if self._ctx is not None:
            self._ctx.term()
        tracing.shutdown()  # the spans still batched go out
        log.info("mesh-peer stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then stop cleanly."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _transport_binding(verifier: CertificateVerifier, trust: TrustStore) -> Callable[[bytes, bytes | None], bool]:
    """Whether a sender's frames may come over a CurveZMQ key: the key its certificate
    names, or, for a key of the trust file (the local CLI), the key derived from it."""
    derived: dict[bytes, bytes] = {}  # Ed25519 public -> X25519 public, bounded by the trust file

    def ok(sender: bytes, key: bytes | None) -> bool:
        if key is None:
            return False
        cert = verifier.certificate_for(sender)
        if cert is not None and cert.curve_public == key:
            return True
        trusted = trust.key_for(sender)
        if trusted is None:
            return False
        raw = public_raw(trusted)
        if raw not in derived:
            if len(derived) >= 10_000:
                derived.clear()
            derived[raw] = derived_public(raw)
        return derived[raw] == key

    return ok


def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


def _reachable(bound: str) -> str:
    """The endpoint a local client should dial: a wildcard bind is reached on loopback."""
    return bound.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace("tcp://[::]:", "tcp://[::1]:")
