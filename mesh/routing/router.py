"""The Router: the shell that runs the pure routing policy (``mesh.routing``) for one
prompt entered at this peer.

For each rung of the escalation ladder it chooses a peer (``choose_route``), generates
there (this peer's backend in-process; another member over RPC ``generate``; or the
cloud backend), retries on another peer when one fails or times out (bounded, with
back-off, circuit breakers fed), and decides from the answer's confidence whether to go
on (``next_step``). It yields wire events for the caller:

- ``{"step": {...}}`` when a rung or a retry starts: who, which model, why (score and
  runner-up), and ``restart: true`` when text already streamed is being replaced;
- ``{"t": text}`` for each piece of the current attempt's answer (with ``"lp"``: its
  tokens' log-probability entries, when the request asked for them);
- ``Final({...})`` once: the kept answer (``text``, ``peer``, ``model``, ``confidence``,
  token counts and timings, ``logprobs`` when asked), and ``path``: every rung taken,
  with its reason.

It owns this peer's reservations (requests it has in flight on each peer, so stale
gossip does not herd requests), the breakers and the session affinity. Time is read
once per decision and passed down.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from mesh import tracing
from mesh.api import ask_args, final_to_wire, text_event
from mesh.clock import SYSTEM, Clock
from mesh.errors import BackendBusy, InvalidRequest, MeshError, NoAnswer, PeerUnavailable, RpcError
from mesh.gossip.service import Membership
from mesh.inference.backend import Backend, FinalStats, GenerationRequest, TextChunk
from mesh.inference.logprobs import entries_from_wire
from mesh.routing import (
    Attempt,
    BreakerBook,
    Candidate,
    RouteReason,
    RouteRequest,
    RoutingConfig,
    SessionAffinity,
    StepKind,
    candidates_from_members,
    choose_route,
    next_step,
    retry_plan,
)
from mesh.routing.echo import SentLog, without_echo
from mesh.routing.fit import FEATURES
from mesh.routing.successors import ROTATION_WAIT_S, Successors
from mesh.rpc.pool import PeerPool
from mesh.rpc.server import Final

log = logging.getLogger("mesh.routing.router")

GENERATE_METHOD = "generate"
OFFER_WAIT_S = 10.0  # after fetching a model for a prompt, how long its offer may take to show in gossip


class Router:
    def __init__(
        self,
        *,
        self_id: str,
        backend: Backend,
        membership: Membership,
        pool: PeerPool,
        cloud: Backend | None = None,
        cfg: RoutingConfig | None = None,
        generate_timeout_s: float = 300.0,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
        observer=None,
        successors: Successors | None = None,
        fetch_model: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """``fetch_model(name)``: a prompt pins a model no member serves; fetch it into this
        peer's model store if the mesh has it (``--auto-pull``), True once it is here."""
        self.fetch_model = fetch_model
        self.self_id = self_id
        # mesh.http.metrics.PeerMetrics (or None): sees every prompt's events once, whoever entered it
        self.observer = observer
        self.backend = backend
        self.membership = membership
        self.pool = pool
        self.cloud = cloud
        self.cfg = replace(cfg or RoutingConfig.lan(), cloud_enabled=cloud is not None,
                           cloud_features=frozenset(cloud.capabilities.features) if cloud is not None else frozenset())
        self.generate_timeout_s = generate_timeout_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.breakers = BreakerBook(cfg=self.cfg)
        self.affinity = SessionAffinity(max_sessions=self.cfg.max_sessions)
        self.active = 0  # prompts being answered through this router now
        # peers that rotated their keys: old id -> new id (the peer's, kept across its own rotations)
        self.successors = successors if successors is not None else Successors()
        self.reservations: Counter[str] = Counter()
        self.sent = SentLog()  # our requests per peer, to take their echo out of gossiped load (routing.echo)
        self.choices: Counter[str] = Counter()  # routing choices per peer, for metrics

    # -- candidates ---------------------------------------------------------------------

    def _candidates(self) -> tuple[list[Candidate], dict[str, list[str]]]:
        view = self.membership.view()
        cands = candidates_from_members(view, rtts=self.membership.rtts(), self_id=self.self_id)
        addresses = {m.peer_id: list(m.addresses) for m in view}
        heard = {m.peer_id: m.load_heard_at for m in view}
        now = self._clock()

        def remote(c: Candidate) -> Candidate:
            at = heard.get(c.peer_id)
            return c if at is None else without_echo(c, self.sent.echo(c.peer_id, at, now))

        return [self._live(c) if c.is_local else remote(c) for c in cands], addresses

    def _live(self, c: Candidate) -> Candidate:
        """This peer's own load as the backend has it now, not as last gossiped (which
        lags by up to a meta period: right after a burst the peer would call itself busy).
        Scoring adds our reservations on top, so only the load they do not cover goes
        in: the queue ahead is then max(live load, our reservations here)."""
        load = self.backend.load()
        extra = max(0, load.running + load.waiting - self.reservations.get(self.self_id, 0))
        running = min(load.running, extra)
        return replace(c, running=running, waiting=extra - running)

    def resolve_peer(self, prefix: str) -> str:
        """A peer id from a member's name or a prefix of its id (``mesh ask --peer``)."""
        view = self.membership.view()
        # a member's exact name wins over an id prefix: ids are base32, so "p2" may well
        # begin another member's id
        matches = [m for m in view if m.name == prefix] or [m for m in view if m.peer_id.startswith(prefix)]
        hits = {m.peer_id for m in matches}
        if len(hits) > 1:  # a name outlives a key (mesh rotate): the member in the mesh now is meant,
            # else the one not revoked (rotating right now: the router waits for its successor)
            current = [m for m in matches if not m.revoked]
            live = [m for m in current if m.live]
            hits = {m.peer_id for m in (live or current)}
        if len(hits) != 1:
            raise InvalidRequest(
                f"--peer {prefix!r} matches {'no member' if not hits else f'{len(hits)} members'}; see `mesh peers`"
            )
        return hits.pop()

    def known_models(self) -> dict[str, int]:
        """Every model this peer knows of in the mesh (any member it has heard of, also
        ones offline now, this peer's own and the cloud's) -> its largest context length.
        Used to refuse a durable job nobody could ever serve."""
        out: dict[str, int] = {}

        def add(name, ctx) -> None:
            if isinstance(name, str) and name and isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0:
                out[name] = max(out.get(name, 0), ctx)

        for m in self.membership.view():
            for model in m.models:
                add(model.name, model.context_length)
        for backend in (self.backend, self.cloud):
            if backend is not None:
                caps = backend.capabilities
                add(caps.model, caps.context_length)
        return out

    def plan_first(self, route: RouteRequest) -> str | None:
        """Where the first rung of ``route`` would go now: a member's peer id, "cloud",
        or None when nothing fits. Used to hand a durable job to the peer that would
        serve it; the choice is not reserved (the caller reserves what it hands over)."""
        step = next_step([], None, route, [], cfg=self.cfg)
        if step.kind is StepKind.CLOUD:
            return "cloud"
        if step.kind is not StepKind.ROUTE or step.request is None:
            return None
        candidates, _ = self._candidates()
        decision = choose_route(
            step.request, candidates, reservations=self.reservations, affinity=self.affinity,
            breakers=self.breakers, now=self._clock(), rng=self._rng, cfg=self.cfg,
        )
        return decision.chosen.peer_id if decision.ok else None

    # -- one prompt ---------------------------------------------------------------------

    def ask(self, gen: GenerationRequest, route: RouteRequest, *, entry: str | None = None,
            trace_parent=None) -> AsyncIterator[Any]:
        """The events of one prompt (see the module docstring). ``entry``: where it came in
        (rpc, http, job), for metrics; None lets the observer tell from the context.
        ``trace_parent``: the caller's trace context (``mesh.tracing.extract``), if any."""
        if route.session_id is not None and gen.session != route.session_id:
            gen = replace(gen, session=route.session_id)  # the answering backend keeps the session's prompt cache
        events = self._counted(self._traced(gen, route, entry, trace_parent))
        return events if self.observer is None else self.observer.watch(events, gen, entry=entry)

    def rename_peer(self, old: str, new: str) -> None:
        """Peer ``old`` is ``new`` now (``mesh rotate``): prompts pinned to it and sessions
        on it follow it."""
        self.successors.learn(old, new)
        self.affinity.rename_peer(old, new)

    async def _counted(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        self.active += 1
        try:
            async for ev in events:
                yield ev
        finally:
            self.active -= 1

    async def _traced(self, gen: GenerationRequest, route: RouteRequest, entry: str | None,
                      parent) -> AsyncIterator[Any]:
        """``_ask_across_rotation`` in a ``mesh.ask`` span (mesh.tracing)."""
        root = tracing.child("mesh.ask", parent, kind=tracing.SpanKind.SERVER, attributes={
            "mesh.peer": self.self_id, "mesh.entry": entry or "", "mesh.pinned_model": route.pinned_model or "",
            "mesh.pinned_peer": route.pinned_peer or "", "mesh.max_tokens": gen.max_tokens})
        error = None
        final = None
        try:
            async for ev in self._ask_across_rotation(gen, route, root):
                if isinstance(ev, Final):
                    final = ev.data
                yield ev
        except BaseException as e:
            error = e
            raise
        finally:
            attrs = tracing.generation_attributes(final)
            if final:
                attrs.update({"mesh.answered_by": (final.get("route") or {}).get("peer") or final.get("peer"),
                              "mesh.escalated": bool(final.get("escalated")), "mesh.stopped": final.get("stopped")})
            tracing.end(root, error=error, attributes=attrs)

    async def _ask_across_rotation(self, gen: GenerationRequest, route: RouteRequest, root=None) -> AsyncIterator[Any]:
        """``_ask``; when nothing could answer and no text went out, but a member that
        could have is rotating its keys (left moments ago, successor not here yet), wait
        for its successor and ask once more (see ``mesh.routing.successors``)."""
        await self._fetch_if_unserved(route)
        streamed = False
        try:
            async for ev in self._ask(gen, self._following(route), root):
                streamed = streamed or (isinstance(ev, dict) and "t" in ev)
                yield ev
            return
        except NoAnswer:
            waiting = self.successors.awaiting(self.membership.view())
            if streamed or not waiting:
                raise
            log.info("nothing could answer while %d peer(s) rotate their keys; waiting for them", len(waiting))
            deadline = self._clock() + ROTATION_WAIT_S
            while self.successors.awaiting(self.membership.view()) and self._clock() < deadline:
                await self._clock.sleep(0.1)
        async for ev in self._ask(gen, self._following(route), root):
            yield ev

    def _serves(self, model: str) -> bool:
        candidates, _ = self._candidates()
        return any(c.model.casefold() == model.casefold() for c in candidates)

    async def _fetch_if_unserved(self, route: RouteRequest) -> None:
        """A prompt pins a model no member serves: with ``fetch_model`` (``--auto-pull``),
        this peer fetches it from a member's model store, then serves it (the prompt waits
        for the pull; once this peer's gossip offers the model, routing goes on as usual)."""
        name = route.pinned_model
        if self.fetch_model is None or not name or self._serves(name):
            return
        log.info("no member serves %s: fetching it for this prompt (--auto-pull)", name)
        if not await self.fetch_model(name):
            return  # nobody has it: routing says so (no answer)
        deadline = self._clock() + OFFER_WAIT_S
        while not self._serves(name) and self._clock() < deadline:
            await self._clock.sleep(0.1)

    def _following(self, route: RouteRequest) -> RouteRequest:
        """``route`` pinned to the id its pinned peer goes by now (it may have rotated)."""
        if not route.pinned_peer:
            return route
        return replace(route, pinned_peer=self.successors.current(route.pinned_peer))

    async def _ask(self, gen: GenerationRequest, route: RouteRequest, root=None) -> AsyncIterator[Any]:
        seen = {"busy": False}  # per prompt: some fit peer said busy
        path: list[Attempt] = []
        answers: list[dict | None] = []  # per attempt: its final wire dict (with text), or None
        step = next_step(path, None, route, [], cfg=self.cfg)
        n = 0
        while step.kind is not StepKind.STOP:
            candidates, addresses = self._candidates()
            span = tracing.child("mesh.step", root, attributes={
                "mesh.step": n, "mesh.step.kind": "cloud" if step.kind is StepKind.CLOUD else "route",
                "mesh.step.reason": step.reason})
            if step.kind is StepKind.CLOUD:
                assert self.cloud is not None
                yield {"step": {"n": n, "kind": "cloud", "reason": step.reason, "model": self.cloud.capabilities.model,
                                "restart": n > 0}}
                final = None
                gen_span = tracing.child("mesh.generate", span, attributes={"mesh.peer": "cloud"})
                try:
                    async for ev in self._run_backend(self.cloud, gen, peer="cloud"):
                        if isinstance(ev, dict):
                            final = ev
                        else:
                            yield text_event(ev)
                except InvalidRequest as e:
                    tracing.end(gen_span, error=e)
                    tracing.end(span, error=e)
                    raise
                except MeshError as e:  # the cloud is unreachable or refused: keep what the mesh gave
                    log.warning("cloud failed: %s", e)
                    final = None
                    tracing.end(gen_span, error=e)
                else:
                    tracing.end(gen_span, attributes=tracing.generation_attributes(final))
                conf = final["confidence"] if final else None
                path.append(Attempt.from_cloud(self.cloud.capabilities.model, confidence=conf, reason=step.reason))
                answers.append(final)
            else:
                assert step.request is not None
                attempt, final = None, None
                try:
                    async for ev in self._route_once(step.request, step.reason, gen, candidates, addresses, n, seen,
                                                     span):
                        if isinstance(ev, tuple):
                            attempt, final = ev
                        else:
                            yield ev
                except BaseException as e:
                    tracing.end(span, error=e)
                    raise
                path.append(attempt or Attempt.no_route(reason=step.reason))
                answers.append(final)
            tracing.end(span, attributes={"mesh.answered": answers[-1] is not None,
                                          "mesh.confidence": path[-1].confidence, "mesh.peer": path[-1].peer_id})
            n += 1
            last_conf = path[-1].confidence
            step = next_step(path, last_conf, route, candidates, cfg=self.cfg)
        if step.keep is None:
            if seen["busy"]:  # say so at once rather than queue without bound
                raise BackendBusy(f"every peer that could answer is busy ({step.reason}); try again shortly")
            failures = "; ".join(seen.get("errors", [])[-3:])
            raise NoAnswer(f"nothing in the mesh could answer: {step.reason}" + (f" (failures: {failures})" if failures else ""))
        kept = dict(answers[step.keep] or {})
        kept["path"] = [_attempt_wire(a, answers[i]) for i, a in enumerate(path)]
        kept["stopped"] = step.reason
        kept["escalated"] = len(path) > 1
        yield Final(kept)

    async def _route_once(self, request: RouteRequest, why: str, gen, candidates, addresses, n: int, seen: dict,
                          parent=None):
        """One rung: choose, generate, retry elsewhere on failure. Yields events, then
        ``(Attempt, final)`` (final None when nothing answered)."""
        now = self._clock()
        decision = choose_route(
            request, candidates, reservations=self.reservations, affinity=self.affinity, breakers=self.breakers,
            now=now, rng=self._rng, cfg=self.cfg,
        )
        if not decision.ok:
            yield {"step": {"n": n, "kind": "route", "reason": why, "no_route": f"{decision.reason}: {decision.detail}"}}
            if decision.reason in (RouteReason.ALL_BUSY, RouteReason.UNAVAILABLE) and decision.busy:
                seen["busy"] = True
            if decision.reason is RouteReason.NO_FIT and FEATURES in decision.detail:
                seen.setdefault("errors", []).append(decision.detail)  # say which options no peer honours
            yield (Attempt.no_route(reason=f"{why}; {decision.reason}"), None)
            return
        candidate, attempt_no, restart = decision.chosen, 0, n > 0
        while candidate is not None:
            info = _route_info(decision, candidate, why, n, attempt_no, restart)
            # A caller learns who answers before the text starts, except when it is this
            # peer at the first try: then the final's "route" says so and no extra frame
            # (one more signed message) delays the first token.
            if n or attempt_no or candidate.peer_id != self.self_id:
                yield {"step": info}
            if not self.breakers.on_attempt(candidate.peer_id, now=self._clock()):
                candidate, _ = retry_plan(decision, attempt_no + 1, cfg=self.cfg, rng=self._rng)
                attempt_no += 1
                continue
            self.reservations[candidate.peer_id] += 1
            self.choices[candidate.peer_id] += 1
            sent = self.sent.started(candidate.peer_id, self._clock())
            final = None
            streamed = False
            failure: BaseException | None = None
            span = tracing.child("mesh.attempt", parent, kind=tracing.SpanKind.CLIENT, attributes={
                "mesh.peer": candidate.peer_id, "mesh.peer.name": candidate.name or "", "mesh.model": candidate.model,
                "mesh.attempt": attempt_no, "mesh.choice": str(decision.reason)})
            try:
                async for ev in self._generate_on(candidate, gen, addresses.get(candidate.peer_id, []), span):
                    if isinstance(ev, dict):
                        final = ev
                    else:
                        streamed = True
                        yield text_event(ev)
            except BackendBusy as e:
                log.info("peer %s busy: %s", candidate.peer_id[:12], e)
                seen["busy"] = True
                failure = e
            except (RpcError, MeshError, OSError) as e:
                failure = e
                if isinstance(e, InvalidRequest):
                    raise
                log.warning("peer %s failed: %s", candidate.peer_id[:12], e)
                seen.setdefault("errors", []).append(f"{candidate.name or candidate.peer_id[:12]}: {e}")
                self.breakers.record_failure(candidate.peer_id, now=self._clock())
                self.affinity.forget_peer(candidate.peer_id)
            except BaseException as e:
                failure = e
                raise
            finally:
                tracing.end(span, error=failure if final is None else None,
                            attributes=tracing.generation_attributes(final))
                self.sent.ended(sent, self._clock())
                self.reservations[candidate.peer_id] -= 1
                if self.reservations[candidate.peer_id] <= 0:
                    del self.reservations[candidate.peer_id]
            if final is not None:
                self.breakers.record_success(candidate.peer_id, now=self._clock())
                self.affinity.remember(request.session_id, candidate.peer_id)
                final["route"] = info
                yield (Attempt.of(candidate, confidence=final.get("confidence"), reason=why), final)
                return
            attempt_no += 1
            nxt, backoff = retry_plan(decision, attempt_no, cfg=self.cfg, rng=self._rng)
            if nxt is None:
                break
            restart = restart or streamed
            await self._clock.sleep(backoff)
            candidate = nxt
        yield (Attempt.no_route(reason=f"{why}; every peer tried failed"), None)

    async def _generate_on(self, c: Candidate, gen: GenerationRequest, addresses: list[str], span=None):
        gen = replace(gen, model=c.model)  # the model chosen, of the several that peer may serve
        if c.peer_id == self.self_id:
            gen_span = tracing.child("mesh.generate", span, attributes={"mesh.peer": self.self_id})
            final, error = None, None
            try:
                async for ev in self._run_backend(self.backend, gen, peer=self.self_id):
                    if isinstance(ev, dict):
                        final = ev
                    yield ev
            except BaseException as e:
                error = e
                raise
            finally:
                tracing.end(gen_span, error=error, attributes=tracing.generation_attributes(final))
            return
        if not addresses:
            raise RpcError(f"no address known for peer {c.peer_id[:12]}")
        parts: list[str] = []
        lps: list = []
        try:
            client = self.pool.client(addresses[0])
            args = ask_args(gen)
            carrier = tracing.inject(span)
            if carrier:
                args["trace"] = carrier  # the answering peer's generate span is this attempt's child
            async with client.stream(GENERATE_METHOD, args, timeout_s=self.generate_timeout_s) as st:
                async for chunk in st:
                    text = chunk.get("t")
                    lp = entries_from_wire(chunk["lp"]) if gen.logprobs and "lp" in chunk else []
                    if isinstance(text, str) and (text or lp):
                        parts.append(text)
                        lps += lp
                        yield TextChunk(text, tuple(lp))
                final = dict(st.result or {})
        except (RpcError, PeerUnavailable):
            self.pool.drop(addresses[0])
            raise
        final["text"] = "".join(parts)
        if gen.logprobs:
            final["logprobs"] = lps
        yield final

    async def _run_backend(self, backend: Backend, gen: GenerationRequest, *, peer: str):
        parts: list[str] = []
        lps: list = []
        stream = backend.stream(gen)
        try:
            async for item in stream:
                if isinstance(item, TextChunk) and (item.text or item.logprobs):
                    parts.append(item.text)
                    lps += item.logprobs
                    yield item
                elif isinstance(item, FinalStats):
                    final = final_to_wire(item, peer=peer)
                    final["text"] = "".join(parts)
                    if gen.logprobs:
                        final["logprobs"] = lps
                    yield final
        finally:
            await stream.aclose()


def _route_info(decision, c: Candidate, why: str, n: int, attempt: int, restart: bool) -> dict:
    info: dict[str, Any] = {
        "n": n, "kind": "route", "reason": why, "peer": c.peer_id, "name": c.name, "model": c.model,
        "choice": str(decision.reason), "detail": decision.detail, "attempt": attempt, "restart": restart,
    }
    if decision.chosen is c and decision.score is not None:
        info["score_s"] = round(decision.score, 3)
    if decision.runner_up is not None:
        info["runner_up"] = {"peer": decision.runner_up.peer_id, "name": decision.runner_up.name,
                             "score_s": None if decision.runner_up_score is None else round(decision.runner_up_score, 3)}
    return info


def _attempt_wire(a: Attempt, final: dict | None) -> dict:
    return {"peer": a.peer_id or ("cloud" if a.cloud else None), "model": a.model, "confidence": a.confidence,
            "reason": a.reason, "cloud": a.cloud, "answered": final is not None,
            "text": final.get("text") if final else None}
