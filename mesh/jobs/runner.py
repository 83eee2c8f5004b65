"""Runs this peer's durable jobs (``mesh.jobs.JobStore``) through the Router.

A loop claims the oldest due job (a lease, renewed while it runs), routes it like any
prompt (this peer, another member, or the cloud, with escalation), and stores the
result once. When nothing can answer now (every peer busy, no fit model, the cloud
unreachable) the job goes back to the queue with back-off and is tried again later:
nothing is lost. A job whose request cannot be served at all fails at once.

A peer killed mid-job leaves a lease that expires; the job is then claimed again (at
least once), and completion is fenced by the lease so only one result is stored.
A job adopted from another owner that this peer was running when it died is run again
only if its owner still hands it here (``job.confirm``): an owner that took it back
meanwhile has run it elsewhere, and the copy here is forgotten, not generated twice.

A job cancelled while it runs here (``JobStore.cancel``: ``mesh cancel``) stops
generating at once: the store tells the runner, which cancels the routed prompt (the
peer generating it is told to stop, as for any cancelled call). A lease lost while
renewing stops it the same way. Either way the store refuses its result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh import tracing
from mesh.clock import SYSTEM, Clock
from mesh.errors import BackendBusy, InvalidRequest, MeshError, NoAnswer
from mesh.jobs import JobStore
from mesh.routing import RouteRequest
from mesh.routing.router import Router
from mesh.rpc.server import Final
from mesh.rpc.tasks import Background, cancel_and_wait

log = logging.getLogger("mesh.jobs")

LEASE_S = 60.0  # a job's lease; renewed every third of it while generating
CONFIRM_RETRY_S = 1.0  # an adopted job to run again, whose owner is not in the view yet, is asked about again after this
IDLE_POLL_S = 1.0  # how often an idle runner looks for due jobs (a submit wakes it at once)
PRUNE_EVERY_S = 600.0
WAIT_BASE_S = 1.0  # a job nothing can answer waits this long, doubling ...
WAIT_MAX_S = 30.0  # ... up to this, for as long as it takes
KEEP_RESULTS_S = 7 * 24 * 3600.0  # finished jobs are kept this long ...
MAX_STORE_BYTES = 256 << 20  # ... and within this disk budget


class JobRunner:
    def __init__(
        self, *, store: JobStore, router: Router, self_id: str, threshold: float = 0.7,
        clock: Clock = SYSTEM, sync=None, keep_s: float = KEEP_RESULTS_S,
        max_bytes: int = MAX_STORE_BYTES,
    ) -> None:
        """``sync`` (a ``mesh.jobs.sync.JobSync``): hand this peer's jobs to the peer the
        router would choose; without it every job is routed from here."""
        self.sync = sync
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self.store = store
        self.router = router
        self.self_id = self_id
        self.threshold = threshold
        self._clock = clock
        self._wake = asyncio.Event()
        self._background = Background("job-runner")
        self._waits: dict[str, int] = {}  # job id -> times nothing could answer it (its back-off)
        self._draining = False
        self._running: tuple[str, asyncio.Task] | None = None  # the job being routed now, and that task
        self._unwatch: Callable[[], None] | None = None

    async def start(self) -> None:
        # Jobs this peer was running when it died (kill -9, power loss): requeue them now
        # instead of waiting for their leases to expire.
        for job in self.store.list(states=["running"], limit=1000):
            if job.lease_holder == self.self_id:
                self.store.fail(job.id, worker=self.self_id, error="the peer restarted", retry=True, now=self._clock())
                log.info("job %s requeued: this peer restarted while running it", job.id)
        self._unwatch = self.store.watch_cancel(self._stop_job)
        await self._background.start(loop=self._loop)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, *, drain_s: float = 0.0) -> None:
        """Stop. With ``drain_s``, claim nothing new and give the job in flight that long
        to finish first (``mesh rotate``); a job still running then goes back to the queue."""
        if not self._background.running:
            return
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if drain_s > 0:
            self._draining = True
            self._wake.set()
            await asyncio.wait({self._background.loops["loop"]}, timeout=drain_s)
        await self._background.close()

    async def _loop(self) -> None:
        last_prune = 0.0
        while not self._draining:
            now = self._clock()
            if now - last_prune >= PRUNE_EVERY_S:
                last_prune = now
                removed = self.store.prune(keep_s=self.keep_s, max_bytes=self.max_bytes, now=now)
                if removed:
                    log.info("pruned %d finished jobs", removed)
            job = self.store.claim(worker=self.self_id, lease_s=LEASE_S, now=now)
            if job is None:
                self._wake.clear()
                await self._clock.wait(self._wake, IDLE_POLL_S)
                continue
            await self._run(job)

    async def _run(self, job) -> None:
        # a job handed over by its owner carries the owner's trace context (mesh.tracing)
        parent = tracing.extract(job.route.get("trace")) if isinstance(job.route, dict) else None
        span = tracing.child("mesh.job", parent, attributes={"mesh.job.id": job.id, "mesh.job.owner": job.owner,
                                                             "mesh.peer": self.self_id})
        outcome = None
        try:
            outcome = await self._run_job(job, span)
        except BaseException as e:
            tracing.end(span, error=e)
            raise
        tracing.end(span, attributes={"mesh.job.outcome": outcome})

    async def _run_job(self, job, span) -> str:
        """One go at ``job``; how it ended (for its span)."""
        try:
            gen = job.generation_request()
            route = RouteRequest.for_generation(gen, **_route_kwargs(job.route, self.threshold))
        except InvalidRequest as e:
            self.store.fail(job.id, worker=self.self_id, error=str(e), retry=False, now=self._clock())
            return "invalid"
        if self.sync is not None and job.owner == self.self_id:
            # Another peer would serve it: hand it over, so it runs there from a durable
            # queue and its result comes back even if this peer goes offline meanwhile.
            target = self.router.plan_first(route)
            if target not in (None, "cloud", self.self_id) and await self.sync.hand_over(job, target, span=span):
                self._waits.pop(job.id, None)
                return "handed over"
        if self.sync is not None and job.owner != self.self_id and job.attempts > 1:
            # this peer was running another owner's job when it died or stopped: if the
            # owner has taken it back since (and ran it elsewhere), forget it rather than
            # generate it twice
            wanted = await self.sync.still_wanted(job)
            if wanted is None:
                self.store.defer(job.id, worker=self.self_id, reason="asking its owner whether it is still ours",
                                 delay_s=CONFIRM_RETRY_S, now=self._clock())
                return "waiting"
            if not wanted:
                self.store.withdraw(job.id)
                self._waits.pop(job.id, None)
                return "withdrawn"
        # the prompt is routed in a task of its own, so that cancelling the job (_stop_job)
        # stops it and nothing else; both tasks end before _run returns (the finally below)
        answering = asyncio.create_task(self._answer(job, gen, route, span), name=f"job-{job.id}")
        self._running = (job.id, answering)
        renewer = asyncio.create_task(self._renew(job.id))
        try:
            final = await answering
            text = final.get("text", "")
            stats = {k: v for k, v in final.items() if k != "text"}
            ran_on = final.get("peer") if isinstance(final.get("peer"), str) and final.get("peer") else None
            if self.store.complete(job.id, worker=self.self_id, result_text=text, stats=stats, now=self._clock(),
                                   ran_on=ran_on):
                log.info("job %s done on %s", job.id, final.get("peer"))
            self._waits.pop(job.id, None)
            return "done"
        except asyncio.CancelledError:
            if answering.cancelled() and not asyncio.current_task().cancelling():
                # only this job was stopped (cancelled, or its lease lost), not the runner
                log.info("job %s stopped while running (%s)", job.id, self.store.get(job.id).state.value)
                return "stopped"
            # the peer is stopping: the job goes back to the queue
            self.store.fail(job.id, worker=self.self_id, error="the peer stopped", retry=True, now=self._clock())
            raise
        except InvalidRequest as e:
            self.store.fail(job.id, worker=self.self_id, error=str(e), retry=False, now=self._clock())
            return "invalid"
        except (NoAnswer, BackendBusy) as e:  # nothing can answer now: wait, without spending an attempt
            if len(self._waits) > 10_000:  # bounded: a forgotten entry only resets that job's back-off
                self._waits.clear()
            self._waits[job.id] = waits = self._waits.get(job.id, 0) + 1
            delay = min(WAIT_MAX_S, WAIT_BASE_S * 2 ** min(waits - 1, 10))
            log.info("job %s waits %.0f s: %s", job.id, delay, e)
            self.store.defer(job.id, worker=self.self_id, reason=str(e), delay_s=delay, now=self._clock())
            return "waiting"
        except MeshError as e:  # this attempt failed: retried (attempts are bounded)
            log.info("job %s attempt failed: %s", job.id, e)
            self.store.fail(job.id, worker=self.self_id, error=str(e), retry=True, now=self._clock())
            return "failed"
        finally:
            self._running = None
            await cancel_and_wait(renewer)
            await cancel_and_wait(answering)

    async def _answer(self, job, gen, route, span=None) -> dict:
        """Route the job's prompt; its final reply (text and stats)."""
        final = None
        peer, generating = self.self_id, None  # who generates: this peer unless a route step names another
        async for ev in self.router.ask(gen, route, trace_parent=span):
            if isinstance(ev, dict) and "step" in ev:
                peer = ev["step"].get("peer") or ev["step"].get("kind", "?")
            elif (isinstance(ev, Final) or isinstance(ev, dict) and "t" in ev) and generating != peer:
                generating = peer  # one line per generation started (bench/jobs_soak.py counts them)
                log.info("job %s: generating on %s", job.id, peer)
            if isinstance(ev, Final):
                final = ev.data
        if final is None:
            raise MeshError("the router ended without an answer")
        return final

    def _stop_job(self, job_id: str) -> None:
        """Stop generating ``job_id`` if this runner is routing it now (the store cancelled
        it, or its lease was lost): its routed prompt is cancelled, the loop goes on."""
        if self._running is not None and self._running[0] == job_id:
            self._running[1].cancel()

    async def _renew(self, job_id: str) -> None:
        while True:
            await self._clock.sleep(LEASE_S / 3)
            if not self.store.renew(job_id, worker=self.self_id, lease_s=LEASE_S, now=self._clock()):
                log.warning("lost the lease on job %s (cancelled, or taken over): stopping it", job_id)
                self._stop_job(job_id)
                return


def _route_kwargs(route: dict, threshold: float) -> dict:
    from mesh.api import route_from_args

    return {"threshold": threshold, **route_from_args({"route": route})}
