"""Jobs between peers: handing a job over to the peer that will run it, and getting its
outcome back to the owner, even across the owner being offline.

Owner side (the peer a job was submitted to):

- ``hand_over(job, to)``: the runner chose another peer for a job; that peer stores it
  durably under the same id (``job.handover``, signed RPC) and runs it from its own
  queue. Here the job stays ``running`` with the executor as lease holder; while the
  executor is alive (or merely suspect) in the gossip view the lease is renewed, and
  every ``recheck_s`` the handover is repeated, which the executor answers with the
  job's state and, once finished, its outcome (so a lost delivery heals). When the
  executor is dead or gone, the job is requeued at once and runs elsewhere (at least
  once; the first outcome stored wins, a late one changes nothing). A handed-over job
  cancelled here is released at once; the executor's outcome is then refused as known.
- ``job.result``: an executor delivers outcomes; stored once (``import_result``).

Executor side:

- ``job.handover``: only the job's owner may hand it over (checked against the signed
  sender id); per-owner cap on open jobs (``busy`` past it).
- Outcomes of other owners' jobs are held in the store until delivered: each tick, for
  each owner with undelivered outcomes that the gossip view shows alive, up to 32 go in
  one ``job.result`` call; an owner that does not answer is retried with back-off. An
  owner offline for a week gets its results when it returns (pruning keeps undelivered
  outcomes for ``JobSyncConfig.hold_s``).

Time is read from the injected clock; the loop is the only task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from mesh import tracing
from mesh.clock import SYSTEM, Clock
from mesh.errors import BackendBusy, InvalidRequest, MeshError
from mesh.gossip.view import MemberView
from mesh.identity.keys import peer_id_text
from mesh.jobs import TERMINAL, JobNotFound, JobState, JobStore
from mesh.jobs.config import JobSyncConfig
from mesh.jobs.wire import (
    MAX_OUTCOMES_PER_CALL,
    Outcome,
    confirm_answer,
    handover_from_wire,
    handover_to_wire,
    job_id_from_wire,
    outcome_from_wire,
    outcome_of,
    outcomes_from_wire,
)
from mesh.rpc.server import CallContext, Method, unary
from mesh.rpc.tasks import Background

log = logging.getLogger("mesh.jobs")

HANDOVER_METHOD = "job.handover"
RESULT_METHOD = "job.result"
CONFIRM_METHOD = "job.confirm"
CANCEL_METHOD = "job.cancel_handed"
_LIVE = ("alive", "suspect")


class JobSync:
    def __init__(
        self, *, store: JobStore, membership, pool, self_id: str, reservations: Counter | None = None,
        on_new_job: Callable[[], None] | None = None, cfg: JobSyncConfig | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.membership = membership
        self.pool = pool
        self.self_id = self_id
        self.cfg = cfg or JobSyncConfig()
        self.reservations = reservations if reservations is not None else Counter()
        self.on_new_job = on_new_job
        self._clock = clock
        self._background = Background("job-sync")  # the sync loop, rechecks and probes in flight
        self._unwatch: Callable[[], None] | None = None
        self._reserved: dict[str, str] = {}  # handed-over job id -> executor counted in reservations
        self._rechecked: dict[str, float] = {}  # handed-over job id -> last time the executor was asked
        self._owner_retry: dict[str, tuple] = {}  # owner -> (next try at, current delay, its incarnation then)
        self._probing: set[str] = set()  # handed-over jobs whose executor is being asked before a requeue
        self._started = clock()
        self.counts: Counter[str] = Counter()  # handed, adopted, delivered, imported, requeued, withdrawn, refused:*

    # -- lifecycle ------------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        return {HANDOVER_METHOD: unary(self._on_handover), RESULT_METHOD: unary(self._on_result),
                CONFIRM_METHOD: unary(self._on_confirm), CANCEL_METHOD: unary(self._on_cancel_handed)}

    async def start(self) -> None:
        self._started = self._clock()
        for job in self.store.handed_over():  # after a restart: still running elsewhere
            self._reserve(job.id, job.lease_holder)
        self._unwatch = self.store.watch_cancel(self._cancelled)
        await self._background.start(loop=self._loop)

    async def stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        await self._background.close()

    def pending(self, counts: dict[str, int] | None = None) -> dict[str, int]:
        """What waits to sync: outcomes held for other peers, own jobs running elsewhere
        (from ``counts``, the store's ``counts()``, when the caller already has them)."""
        c = self.store.counts() if counts is None else counts
        return {"outcomes_held": c.get("undelivered", 0), "handed_over": c.get("handed_over", 0)}

    # -- owner side -----------------------------------------------------------------------

    async def hand_over(self, job, to: str, *, span=None) -> bool:
        """Hand ``job`` (claimed by this peer) to peer ``to``. True if ``to`` took it (or
        already had its outcome, now stored here); False to run it some other way.
        ``span``: the job's span; the executor's run of it joins the trace (mesh.tracing)."""
        address = self._address(to)
        if address is None:
            return False
        hspan = tracing.child("mesh.job.handover", span, kind=tracing.SpanKind.CLIENT,
                              attributes={"mesh.job.id": job.id, "mesh.peer": to})
        wire = handover_to_wire(job)
        carrier = tracing.inject(hspan)
        if carrier:  # kept with the job's routing options where it runs (its request is canonical)
            wire["job"]["route"] = {**(job.route or {}), "trace": carrier}
        try:
            reply = await self.pool.client(address).call(HANDOVER_METHOD, wire, timeout_s=self.cfg.call_timeout_s)
        except (MeshError, OSError) as e:
            log.info("handover of job %s to %s failed: %s", job.id, to[:12], e)
            tracing.end(hspan, error=e)
            if not isinstance(e, BackendBusy):
                self.pool.drop(address)
            return False
        tracing.end(hspan)
        if self._import_reply(job.id, to, reply):
            return True
        if not self.store.hand_over(job.id, worker=self.self_id, to=to, lease_s=self.cfg.handover_lease_s,
                                    now=self._clock()):
            return True  # cancelled meanwhile: the executor's outcome will be ignored
        self._reserve(job.id, to)
        self._rechecked[job.id] = self._clock()
        self.counts["handed"] += 1
        log.info("job %s handed over to %s", job.id, to[:12])
        return True

    def _import_reply(self, job_id: str, executor: str, reply: Any) -> bool:
        """A handover reply that carries the outcome: store it. True if the job is over."""
        raw = reply.get("outcome") if isinstance(reply, dict) else None
        if raw is None:
            return False
        try:
            outcome = outcome_from_wire(raw)
        except InvalidRequest as e:
            self.counts["refused:bad_outcome"] += 1
            log.warning("peer %s sent a bad outcome for job %s: %s", executor[:12], job_id, e)
            return False
        if outcome.id != job_id:
            self.counts["refused:bad_outcome"] += 1
            return False
        self._store_outcome(outcome)
        return True

    def _store_outcome(self, o: Outcome) -> bool:
        now = self._clock()
        if o.state == JobState.DONE.value:
            stored = self.store.import_result(o.id, result_text=o.text, stats=o.stats, ran_on=o.ran_on, now=now)
        else:
            stored = self.store.import_failure(o.id, error=o.error or "failed", ran_on=o.ran_on, now=now)
        self._release(o.id)
        if stored:
            self.counts["imported"] += 1
            log.info("job %s: outcome (%s) from %s stored", o.id, o.state, o.ran_on[:12])
        return stored

    async def _on_result(self, args: dict, ctx: CallContext) -> dict:
        sender = peer_id_text(ctx.sender)
        stored, known, refused = [], [], {}

        def refuse(job_id: str, code: str, message: str) -> None:
            refused[job_id] = message
            self.counts[f"refused:{code}"] += 1

        for o in outcomes_from_wire(args):
            try:
                job = self.store.get(o.id)
            except JobNotFound:
                refuse(o.id, "unknown_job", "no such job here (pruned, or never submitted here)")
                continue
            if job.owner != self.self_id:
                refuse(o.id, "not_our_job", "not a job of this peer")
            elif job.state in TERMINAL:
                known.append(o.id)
            elif sender not in (job.lease_holder, job.ran_on):  # o.ran_on may be a third peer it routed to
                refuse(o.id, "not_handed", "this job was not handed to you")
            elif self._store_outcome(o):
                stored.append(o.id)
            else:
                known.append(o.id)
        return {"stored": stored, "known": known, "refused": refused}

    def _watch_handed(self, view: dict[str, MemberView], now: float) -> None:
        for job in self.store.handed_over():
            holder = job.lease_holder
            member = view.get(holder)
            state = member.state if member else None
            if state in _LIVE:
                self.store.renew(job.id, worker=holder, lease_s=self.cfg.handover_lease_s, now=now)
                if now - self._rechecked.get(job.id, 0.0) >= self.cfg.recheck_s:
                    self._rechecked[job.id] = now
                    self._spawn(self._recheck(job, holder))
                continue
            if state is None and now - max(self._started, job.updated_at) < self.cfg.absent_grace_s:
                continue  # not (yet) in the view, e.g. just after this peer restarted: wait
            if job.id not in self._probing and now - self._rechecked.get(job.id, 0.0) >= self.cfg.tick_s * 3:
                # The view says dead or gone, but views lag (this peer may itself be coming
                # back from a partition): ask the executor itself before running the job again.
                self._probing.add(job.id)
                self._spawn(self._probe_then_requeue(job, holder, state or "gone"))

    async def _probe_then_requeue(self, job, holder: str, state: str) -> None:
        try:
            address = self._address(holder)
            if address is not None:
                try:
                    reply = await self.pool.client(address).call(
                        HANDOVER_METHOD, handover_to_wire(job), timeout_s=self.cfg.probe_timeout_s
                    )
                except (MeshError, OSError):
                    self.pool.drop(address)
                else:  # it answers: still on it (or done: the reply carries the outcome)
                    self._rechecked[job.id] = self._clock()
                    if not self._import_reply(job.id, holder, reply):
                        self.store.renew(job.id, worker=holder, lease_s=self.cfg.handover_lease_s, now=self._clock())
                    return
            if self.store.fail(job.id, worker=holder, error=f"peer {holder[:12]} it ran on is {state}", retry=True,
                               now=self._clock()):
                self.counts["requeued"] += 1
                log.info("job %s requeued: peer %s it was handed to is %s and does not answer", job.id, holder[:12],
                         state)
                self._release(job.id)
                if self.on_new_job is not None:
                    self.on_new_job()
        finally:
            self._probing.discard(job.id)

    async def _recheck(self, job, holder: str) -> None:
        address = self._address(holder)
        if address is None:
            return
        try:
            reply = await self.pool.client(address).call(
                HANDOVER_METHOD, handover_to_wire(job), timeout_s=self.cfg.call_timeout_s
            )
        except (MeshError, OSError) as e:
            log.debug("recheck of job %s on %s failed: %s", job.id, holder[:12], e)
            return
        self._import_reply(job.id, holder, reply)

    async def _on_confirm(self, args: dict, ctx: CallContext) -> dict:
        job_id = job_id_from_wire(args)
        sender = peer_id_text(ctx.sender)
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return {"run": False, "state": "unknown"}
        if job.owner != self.self_id:
            raise InvalidRequest("this peer does not own that job")
        run = job.state == JobState.RUNNING and job.lease_holder == sender
        return {"run": run, "state": job.state.value}

    # -- executor side ----------------------------------------------------------------------

    async def _on_handover(self, args: dict, ctx: CallContext) -> dict:
        h = handover_from_wire(args)
        sender = peer_id_text(ctx.sender)
        if h.owner != sender:
            self.counts["refused:not_owner"] += 1
            raise InvalidRequest("only a job's owner may hand it over")
        if h.owner == self.self_id:
            raise InvalidRequest("a peer does not hand jobs to itself")
        try:
            job = self.store.get(h.id)
        except JobNotFound:
            if self.store.open_jobs(h.owner) >= self.cfg.max_open_per_owner:
                self.counts["refused:owner_cap"] += 1
                raise BackendBusy(
                    f"this peer already holds {self.cfg.max_open_per_owner} open jobs of yours; hand it elsewhere"
                ) from None
            job = self.store.adopt(h.id, h.request, owner=h.owner, route=h.route, idempotency_key=h.key,
                                   max_attempts=h.max_attempts)
            self.counts["adopted"] += 1
            log.info("job %s adopted from %s", job.id, h.owner[:12])
            if self.on_new_job is not None:
                self.on_new_job()
        if job.owner != h.owner:
            raise InvalidRequest("that job id belongs to another owner")
        return {"state": job.state.value, "outcome": outcome_of(job)}

    async def _on_cancel_handed(self, args: dict, ctx: CallContext) -> dict:
        """The owner cancelled a job it handed here: stop generating it, never deliver it."""
        job_id = job_id_from_wire(args)
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return {"cancelled": False}
        if job.owner != peer_id_text(ctx.sender):
            self.counts["refused:not_owner"] += 1
            raise InvalidRequest("only a job's owner may cancel it here")
        cancelled = self.store.cancel(job_id)  # the runner's watch stops a generation in flight
        if cancelled:
            self.counts["cancelled_by_owner"] += 1
            log.info("job %s cancelled by its owner %s", job_id, job.owner[:12])
        return {"cancelled": cancelled}

    async def still_wanted(self, job) -> bool | None:
        """Before running an adopted job again (this peer was running it when it died or
        stopped), ask its owner whether it is still handed here: True (run it), False
        (withdraw it), None (the owner is not in this peer's view yet, e.g. just after
        a restart: ask again shortly). An owner absent for longer, or that does not
        answer, gets the run anyway: at least once; its outcome waits for it as usual."""
        address = self._address(job.owner)
        if address is None:
            return None if self._clock() - self._started < self.cfg.absent_grace_s else True
        try:
            reply = await self.pool.client(address).call(CONFIRM_METHOD, {"id": job.id},
                                                          timeout_s=self.cfg.probe_timeout_s)
        except (MeshError, OSError) as e:
            log.info("job %s: its owner %s did not confirm (%s); running it", job.id, job.owner[:12], e)
            return True
        run = confirm_answer(reply)
        if run is False:
            self.counts["withdrawn"] += 1
            log.info("job %s withdrawn: its owner %s took it back (%s there)", job.id, job.owner[:12],
                     reply.get("state"))
        return run is not False

    async def _deliver(self, view: dict[str, MemberView], now: float) -> None:
        for owner in self.store.undelivered_owners():
            if owner == self.self_id:
                continue
            member = view.get(owner)
            if member is None or member.state not in _LIVE:
                continue  # held until the owner is back
            next_at, _, incarnation = self._owner_retry.get(owner, (0.0, 0.0, None))
            if now < next_at and member.incarnation == incarnation:
                continue  # backing off, unless the owner has restarted since
            address = self._address(owner, view)
            if address is None:
                continue
            jobs = self.store.undelivered(owner, limit=MAX_OUTCOMES_PER_CALL)
            outcomes = [o for o in (outcome_of(j) for j in jobs) if o is not None]
            if not outcomes:
                continue
            try:
                reply = await self.pool.client(address).call(
                    RESULT_METHOD, {"outcomes": outcomes}, timeout_s=self.cfg.call_timeout_s
                )
            except (MeshError, OSError) as e:
                last = self._owner_retry.get(owner, (0.0, 0.0, None))[1]
                delay = min(self.cfg.retry_max_s, max(self.cfg.retry_base_s, last * 2))
                self._owner_retry[owner] = (now + delay, delay, member.incarnation)
                log.info("delivering %d outcome(s) to %s failed (%s); again in %.0f s", len(outcomes), owner[:12], e,
                         delay)
                if not isinstance(e, BackendBusy):
                    self.pool.drop(address)
                continue
            self._owner_retry.pop(owner, None)
            done = set()
            if isinstance(reply, dict):
                for key in ("stored", "known"):
                    done.update(i for i in reply.get(key) or [] if isinstance(i, str))
                refused = reply.get("refused") or {}
                if isinstance(refused, dict):
                    for job_id, why in refused.items():
                        log.warning("owner %s refused the outcome of job %s: %s", owner[:12], job_id, why)
                        done.add(job_id)
            for o in outcomes:
                if o["id"] in done and self.store.mark_delivered(o["id"]):
                    self.counts["delivered"] += 1

    # -- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                now = self._clock()
                view = {m.peer_id: m for m in self.membership.view()}
                self._watch_handed(view, now)
                await self._deliver(view, now)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad tick must not end syncing for good
                log.exception("job sync tick failed")
            await self._clock.sleep(self.cfg.tick_s)

    # -- helpers --------------------------------------------------------------------------

    def _address(self, peer: str, view: dict[str, MemberView] | None = None) -> str | None:
        if view is None:
            view = {m.peer_id: m for m in self.membership.view()}
        member = view.get(peer)
        return member.address if member is not None else None

    def _reserve(self, job_id: str, peer: str | None) -> None:
        if peer and job_id not in self._reserved:
            self._reserved[job_id] = peer
            self.reservations[peer] += 1

    def _cancelled(self, job_id: str) -> None:
        """A job of this store was cancelled. Handed over: its executor is told to stop and
        stop (best effort: one that missed it and had started the job learns it from
        ``job.confirm`` before it runs it again); either way it no longer counts against it."""
        executor = self._reserved.get(job_id)
        self._release(job_id)
        if executor is not None:
            self._spawn(self._tell_cancelled(job_id, executor))

    async def _tell_cancelled(self, job_id: str, executor: str) -> None:
        address = self._address(executor)
        if address is None:
            return
        try:
            await self.pool.client(address).call(CANCEL_METHOD, {"id": job_id}, timeout_s=self.cfg.call_timeout_s)
        except (MeshError, OSError) as e:
            log.info("could not tell %s that job %s was cancelled: %s", executor[:12], job_id, e)

    def _release(self, job_id: str) -> None:
        self._rechecked.pop(job_id, None)
        peer = self._reserved.pop(job_id, None)
        if peer is not None:
            self.reservations[peer] -= 1
            if self.reservations[peer] <= 0:
                del self.reservations[peer]

    def _spawn(self, coro) -> None:
        self._background.spawn(coro)
