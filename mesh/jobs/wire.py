"""The job messages peers exchange, validated on the way in (pure; no I/O).

- ``job.handover`` (owner -> executor): ``{"job": {id, owner, key, request, route,
  max_attempts}}``. The executor stores it under the same id (``JobStore.adopt``) and
  answers ``{"state": ..., "outcome": ...}``; ``outcome`` is there once the job has
  finished, so a repeated handover doubles as "how is my job?".
- ``job.result`` (executor -> owner): ``{"outcomes": [outcome, ...]}`` with each outcome
  ``{id, state: "done"|"failed", text, stats, error, ran_on}``. The owner answers
  ``{"stored": [ids], "known": [ids], "refused": {id: reason}}``; the executor marks
  every id in ``stored`` or ``known`` as delivered, and stops retrying ``refused`` ones.
- ``job.confirm`` (executor -> owner): ``{"id": ...}``, asked before an executor runs an
  adopted job a second time (it was running it when it died or stopped). The owner
  answers ``{"run": bool, "state": ...}``: ``run`` only while the job is still handed to
  that executor; otherwise (the owner took it back after the executor was declared
  dead, ran it elsewhere, or it was cancelled) the executor forgets its copy instead of
  generating it again.
- ``job.cancel_handed`` (owner -> executor): ``{"id": ...}``, sent when the owner cancels
  a job it handed over: the executor cancels its copy (stops generating it at once,
  never delivers it) and answers ``{"cancelled": bool}``.

Bounds come from ``JobLimits``; the store re-checks what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest
from mesh.jobs.job import DEFAULT_LIMITS, Job, JobLimits, check_name
from mesh.jobs.policy import JobState

MAX_OUTCOMES_PER_CALL = 32
_OUTCOME_STATES = (JobState.DONE.value, JobState.FAILED.value)


@dataclass(frozen=True)
class Handover:
    id: str
    owner: str
    key: str | None
    request: dict
    route: dict
    max_attempts: int


@dataclass(frozen=True)
class Outcome:
    id: str
    state: str  # "done" or "failed"
    text: str | None
    stats: dict | None
    error: str | None
    ran_on: str


def handover_to_wire(job: Job) -> dict[str, Any]:
    return {"job": {"id": job.id, "owner": job.owner, "key": job.idempotency_key, "request": job.request,
                    "route": job.route, "max_attempts": job.max_attempts}}


def handover_from_wire(args: Any, *, limits: JobLimits = DEFAULT_LIMITS) -> Handover:
    job = args.get("job") if isinstance(args, dict) else None
    if not isinstance(job, dict):
        raise InvalidRequest("job.handover needs a 'job' map")
    key = job.get("key")
    if key is not None:
        check_name(key, "job.key", limits)
    request, route = job.get("request"), job.get("route", {})
    if not isinstance(request, dict):
        raise InvalidRequest("job.request must be a map of ask args")
    if not isinstance(route, dict):
        raise InvalidRequest("job.route must be a map")
    attempts = job.get("max_attempts", 5)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= limits.max_attempts_limit:
        raise InvalidRequest(f"job.max_attempts must be an integer in 1..{limits.max_attempts_limit}")
    return Handover(
        id=check_name(job.get("id"), "job.id", limits), owner=check_name(job.get("owner"), "job.owner", limits),
        key=key, request=request, route=route, max_attempts=attempts,
    )


def outcome_of(job: Job) -> dict[str, Any] | None:
    """The outcome of a finished job, as sent to its owner (None while unfinished)."""
    if job.state.value not in _OUTCOME_STATES:
        return None
    return {"id": job.id, "state": job.state.value, "text": job.result_text, "stats": job.stats,
            "error": job.error, "ran_on": job.ran_on or ""}


def outcomes_from_wire(args: Any, *, limits: JobLimits = DEFAULT_LIMITS) -> list[Outcome]:
    raw = args.get("outcomes") if isinstance(args, dict) else None
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_OUTCOMES_PER_CALL:
        raise InvalidRequest(f"job.result needs 'outcomes': a list of 1..{MAX_OUTCOMES_PER_CALL}")
    return [outcome_from_wire(o, limits=limits) for o in raw]


def outcome_from_wire(o: Any, *, limits: JobLimits = DEFAULT_LIMITS) -> Outcome:
    if not isinstance(o, dict):
        raise InvalidRequest("an outcome must be a map")
    state = o.get("state")
    if state not in _OUTCOME_STATES:
        raise InvalidRequest(f"outcome.state must be one of {', '.join(_OUTCOME_STATES)}")
    text, stats, error = o.get("text"), o.get("stats"), o.get("error")
    if state == "done" and not (isinstance(text, str) and isinstance(stats, dict)):
        raise InvalidRequest("a done outcome needs text (a string) and stats (a map)")
    if error is not None and not isinstance(error, str):
        raise InvalidRequest("outcome.error must be a string")
    return Outcome(
        id=check_name(o.get("id"), "outcome.id", limits), state=state, text=text if state == "done" else None,
        stats=stats if state == "done" else None, error=error,
        ran_on=check_name(o.get("ran_on"), "outcome.ran_on", limits),
    )


def job_id_from_wire(args: Any, *, limits: JobLimits = DEFAULT_LIMITS) -> str:
    """The job id of a ``job.confirm`` or ``job.cancel_handed`` call (``{"id": ...}``);
    ``InvalidRequest`` otherwise."""
    return check_name(args.get("id") if isinstance(args, dict) else None, "job.id", limits)


def confirm_answer(reply: Any) -> bool | None:
    """An owner's ``job.confirm`` answer: run it or not; None when malformed."""
    run = reply.get("run") if isinstance(reply, dict) else None
    return run if isinstance(run, bool) else None
