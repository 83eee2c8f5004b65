"""The escalation ladder: what to do after each answer (or failure) for one prompt.

``next_step(path_so_far, answer_confidence, request, candidates, *, cfg)`` returns an
``EscalationStep``; the caller performs it, appends an ``Attempt`` to the path, and
asks again until the step is ``STOP``. The rungs:

1. ``ROUTE`` with the request as given: the best-fit model in the mesh (pins honoured).
2. The last answer's confidence is at least ``request.threshold`` -> ``STOP``
   ("confident"). ``request.no_escalate`` and some answer exists -> ``STOP``.
   (With no answer yet, ``no_escalate`` does not stop the ladder: it declines to
   second-guess an answer, not to find one.)
3. ``ROUTE`` to a stronger model in the mesh not yet tried: fit for the request's
   context and minimums, pins lifted (a pin chooses the first rung only), strictly
   stronger than every model tried (``Candidate.strength``: declared tier, then
   parameters); the strongest such model, ties by name. The step's ``request`` pins
   that model; ``choose_route`` then picks the peer. Skipped when the last attempt
   found no route at all (the mesh cannot serve now).
4. ``CLOUD`` when ``cfg.cloud_enabled``, the request is not ``local_only``, and the
   cloud was not tried yet.
5. ``STOP``, keeping the best answer so far: ``keep`` is the index in the path of the
   answer with the highest confidence (later wins ties), or None if there is none.

The ladder is bounded by ``cfg.max_steps`` attempts. ``local_only`` never yields
``CLOUD`` (checked just before ``CLOUD`` is made). Every attempt records peer, model,
confidence and the step's reason, so the caller can show the whole path.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from mesh.routing.candidate import Candidate
from mesh.routing.config import RoutingConfig
from mesh.routing.fit import unfit_reason
from mesh.routing.request import RouteRequest


class StepKind(enum.StrEnum):
    ROUTE = "route"  # route ``request`` in the mesh (choose_route)
    CLOUD = "cloud"  # ask the configured cloud endpoint
    STOP = "stop"  # done: answer with path[keep] (or report that nothing answered)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One rung taken: who answered with what confidence, and why that rung was taken."""

    peer_id: str | None  # None: no peer was reached (no route), or the cloud
    model: str | None
    confidence: float | None  # None: no answer (failed, or no route)
    reason: str  # the EscalationStep.reason that led here
    cloud: bool = False
    parameters: int = 0  # the model's strength, so escalation can go strictly up
    tier: int | None = None

    @classmethod
    def of(cls, c: Candidate, *, confidence: float | None, reason: str) -> Attempt:
        return cls(c.peer_id, c.model, confidence, reason, parameters=c.parameters, tier=c.tier)

    @classmethod
    def no_route(cls, *, reason: str) -> Attempt:
        return cls(None, None, None, reason)

    @classmethod
    def from_cloud(cls, model: str, *, confidence: float | None, reason: str) -> Attempt:
        return cls(None, model, confidence, reason, cloud=True)

    @property
    def strength(self) -> tuple[int, int]:
        return (self.tier if self.tier is not None else 0, self.parameters)


@dataclass(frozen=True, slots=True)
class EscalationStep:
    kind: StepKind
    reason: str  # for people; recorded in the next Attempt
    request: RouteRequest | None = None  # ROUTE: what to pass to choose_route
    model: str | None = None  # ROUTE to a stronger model: its name
    keep: int | None = None  # index in the path of the best answer so far


def best_answer(path: Sequence[Attempt]) -> int | None:
    """Index of the answer with the highest confidence (later wins ties), or None."""
    best = None
    for i, a in enumerate(path):
        if a.confidence is not None and (best is None or a.confidence >= path[best].confidence):
            best = i
    return best


def next_step(
    path_so_far: Sequence[Attempt],
    answer_confidence: float | None,
    request: RouteRequest,
    candidates: Iterable[Candidate],
    *,
    cfg: RoutingConfig,
) -> EscalationStep:
    """The next rung after ``path_so_far`` (see the module docstring).

    ``answer_confidence``: the confidence of the last attempt's answer (None: it gave
    none); it overrides what the last Attempt recorded."""
    path = tuple(path_so_far)
    if not path:
        return EscalationStep(StepKind.ROUTE, "best fit", request=request)
    if answer_confidence is not None:
        path = path[:-1] + (replace(path[-1], confidence=answer_confidence),)
    last = path[-1]
    keep = best_answer(path)
    conf = last.confidence
    if conf is not None and conf >= request.threshold:
        return EscalationStep(StepKind.STOP, f"confident ({conf:.2f} >= {request.threshold:.2f})", keep=keep)
    if request.no_escalate and keep is not None:
        return EscalationStep(StepKind.STOP, "no escalation asked", keep=keep)
    if len(path) >= cfg.max_steps:
        return EscalationStep(StepKind.STOP, f"ladder limit of {cfg.max_steps} steps", keep=keep)
    why = "no answer" if conf is None else f"confidence {conf:.2f} below {request.threshold:.2f}"

    if not last.cloud and not (last.peer_id is None and last.model is None):
        stronger = _stronger_model(path, request, candidates)
        if stronger is not None:
            return EscalationStep(
                StepKind.ROUTE, f"{why}: stronger model {stronger} in the mesh",
                request=replace(request, pinned_model=stronger, pinned_peer=None), model=stronger, keep=keep,
            )

    if request.local_only:  # the one guard before CLOUD: a local-only prompt never leaves the mesh
        return EscalationStep(StepKind.STOP, f"{why}; no stronger model in the mesh and the request is local-only",
                              keep=keep)
    if not cfg.cloud_enabled:
        return EscalationStep(StepKind.STOP, f"{why}; no stronger model in the mesh and no cloud configured", keep=keep)
    if any(a.cloud for a in path):
        return EscalationStep(StepKind.STOP, f"{why}; the cloud was tried", keep=keep)
    if not request.needs <= cfg.cloud_features:
        missing = ", ".join(sorted(request.needs - cfg.cloud_features))
        return EscalationStep(StepKind.STOP, f"{why}; the cloud cannot honour {missing}", keep=keep)
    return EscalationStep(StepKind.CLOUD, f"{why}: the cloud", keep=keep)


def _stronger_model(path: tuple[Attempt, ...], request: RouteRequest, candidates: Iterable[Candidate]) -> str | None:
    tried = {a.model.casefold() for a in path if a.model is not None}
    floor = max((a.strength for a in path if a.model is not None and not a.cloud), default=(0, 0))
    best: tuple | None = None  # (-tier, -parameters, name): the strongest, ties by name
    for c in candidates:
        if c.model.casefold() in tried or c.strength <= floor or unfit_reason(c, request, pins=False) is not None:
            continue
        key = (-c.strength[0], -c.strength[1], c.model)
        if best is None or key < best:
            best = key
    return best[2] if best else None
