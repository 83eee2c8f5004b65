"""The job record, its input bounds, and how its fields are encoded for storage.

A job's request is stored in its wire form (``mesh.api.ask_args``), canonical JSON, so
what is stored is exactly what a peer would be sent; ``Job.generation_request()`` parses
it back through the same validator the ``ask`` RPC uses.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from mesh.api import ask_args, request_from_ask_args, route_from_args
from mesh.errors import InvalidRequest
from mesh.inference.backend import GenerationRequest
from mesh.jobs.errors import InvalidResult
from mesh.jobs.policy import JobState


def new_job_id() -> str:
    """26 lowercase base32 characters from 128 random bits (``secrets``)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True)
class JobLimits:
    """Bounds on everything a job stores; refused with a clear error, never truncated
    (except error text, which is cut so that reporting a failure cannot itself fail)."""

    max_request_bytes: int = 1 << 20  # the request's canonical JSON, UTF-8
    max_route_bytes: int = 4096  # the routing options' JSON
    max_key_chars: int = 128  # idempotency key, owner and worker peer ids
    max_attempts_limit: int = 100  # largest max_attempts a submitter may ask for
    max_result_bytes: int = 1 << 20  # result text, UTF-8
    max_stats_bytes: int = 16 * 1024  # final stats' JSON
    max_error_chars: int = 4096  # longer error text is cut to this


DEFAULT_LIMITS = JobLimits()


def dumps(value: Any) -> str:
    """Canonical JSON: sorted keys, no NaN/Infinity (refused, not written as non-JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_name(value: Any, what: str, limits: JobLimits) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limits.max_key_chars:
        raise InvalidRequest(f"{what} must be a string of 1..{limits.max_key_chars} characters")
    return value


def encode_request(request_args: Any, limits: JobLimits) -> str:
    """Validate wire args (``InvalidRequest`` on any fault) and return their canonical JSON."""
    if isinstance(request_args, GenerationRequest):
        request = request_args.validate()
    elif isinstance(request_args, dict):
        request = request_from_ask_args(request_args)
    else:
        raise InvalidRequest("a job's request must be a map of ask args")
    if request.logprobs:
        raise InvalidRequest("a job keeps its answer's text, not its logprobs: ask without logprobs")
    text = dumps(ask_args(request))
    size = utf8_len(text)
    if size > limits.max_request_bytes:
        raise InvalidRequest(f"the request is {size} bytes; a job may hold at most {limits.max_request_bytes}")
    return text


def encode_route(route: Any, limits: JobLimits) -> str:
    """Validate routing options (the ``route`` map of an ask) and return their JSON."""
    route = {} if route is None else route
    route_from_args({"route": route})  # raises InvalidRequest on a bad key's value
    try:
        text = dumps(route)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"route must be plain JSON data: {e}") from None
    if utf8_len(text) > limits.max_route_bytes:
        raise InvalidRequest(f"route is larger than {limits.max_route_bytes} bytes")
    return text


def encode_result(result_text: Any, stats: Any, limits: JobLimits) -> tuple[str, str]:
    """Check a result before it is stored; ``InvalidResult`` if it cannot be."""
    if not isinstance(result_text, str):
        raise InvalidResult("result text must be a string")
    size = utf8_len(result_text)
    if size > limits.max_result_bytes:
        raise InvalidResult(f"result is {size} bytes; the store keeps at most {limits.max_result_bytes}")
    if not isinstance(stats, dict):
        raise InvalidResult("stats must be a map")
    try:
        stats_text = dumps(stats)
    except (TypeError, ValueError) as e:
        raise InvalidResult(f"stats must be plain JSON data with finite numbers: {e}") from None
    if utf8_len(stats_text) > limits.max_stats_bytes:
        raise InvalidResult(f"stats are larger than {limits.max_stats_bytes} bytes")
    return result_text, stats_text


def clip_error(error: Any, limits: JobLimits) -> str:
    text = error if isinstance(error, str) else repr(error)
    if len(text) > limits.max_error_chars:
        text = text[: limits.max_error_chars - 1] + "…"
    return text


def check_lease_s(lease_s: Any) -> float:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s < math.inf:
        raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s!r}")
    return float(lease_s)


@dataclass(frozen=True)
class Job:
    """One durable job, as stored. Times are seconds since the epoch (``time.time()``)."""

    id: str
    owner: str  # peer id of the peer that asked; the result goes back to it
    idempotency_key: str | None  # unique per owner
    request: dict  # ask args (wire form of a GenerationRequest)
    route: dict  # routing options (wire form, see mesh.api.route_args)
    state: JobState
    attempts: int  # attempts started (each claim starts one)
    max_attempts: int
    created_at: float
    updated_at: float
    available_at: float  # not claimed before this (retry backoff)
    lease_holder: str | None  # peer id of the worker running it
    lease_expires_at: float | None
    result_text: str | None
    stats: dict | None  # final stats (mesh.api.final_to_wire form)
    error: str | None  # last error, kept across retries
    ran_on: str | None  # peer id of the peer that produced the stored result (or last ran it)
    delivered: bool  # the outcome has reached the owner

    def generation_request(self) -> GenerationRequest:
        return request_from_ask_args(self.request)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``--json`` and logs); ``state`` as its string."""
        d = asdict(self)
        d["state"] = self.state.value
        return d
