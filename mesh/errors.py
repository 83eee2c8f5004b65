"""The one exception tree of mesh.

Foreign errors (zmq, cryptography, msgpack, llama.cpp, OS) are mapped to these at the
boundary where those libraries are imported; callers only ever catch ``MeshError``
subclasses::

    MeshError
    ├── ConfigError            bad flag, environment or data dir
    ├── IdentityError          missing / unreadable / malformed key or trust file
    │   ├── CertificateError   a certificate that is malformed, expired, of another mesh, or forged
    │   └── TokenError         a join token that is malformed, expired, used, or forged
    ├── ModelError             model file missing, corrupt, or failed to load
    │   ├── ModelNotFound      no model by that name or hash (in this store, or in the mesh)
    │   ├── ModelStoreFull     the model store's disk budget (or the disk) cannot hold it
    │   ├── ManifestError      a model manifest malformed, forged, or not matching its model
    │   ├── PullStopped        a model pull with pieces left and no peer left to ask (resumable)
    │   ├── LendRefused        a lender will not reserve memory for this split (too much, busy,
    │   │                      another engine build, not lending)
    │   └── SplitUnavailable   a model too big for this peer, with no lenders enough to split it now
    ├── BackendBusy            the backend's bounded queue is full; try later or elsewhere
    ├── GenerationError        the engine failed while generating
    ├── InvalidRequest         a request that cannot be served as asked (bad field, empty prompt)
    ├── EnvelopeRejected       a frame refused by envelope checks (carries a RejectReason)
    ├── PeerUnavailable        no running peer to talk to (with what to do next)
    ├── NoAnswer               nothing in the mesh (or the cloud) could answer this prompt now
    ├── JobError               the job store refused or failed an operation (mesh.jobs)
    │   ├── JobNotFound        no job with that id in this store
    │   ├── IdempotencyConflict  the idempotency key was used before for another request
    │   ├── InvalidResult      a result or stats that cannot be stored (too big, not JSON)
    │   └── JobStoreError      SQLite failed (locked past busy_timeout, corrupt, disk full,
    │                          schema written by a newer mesh)
    └── RpcError               a call failed; ``code`` says how
        ├── DeadlineExceeded   the call's deadline passed (either side)
        ├── Cancelled          the call was cancelled (by the caller or a shutting-down peer)
        └── RemoteError        the remote side reported an error with no class of its own here
                               (``unknown_method``, ``unauthenticated``, ``internal``, or a
                               code from a newer peer); ``code`` + message

Subclasses defined next to the code that raises them (``GossipError``, ``BadMeta``, ``DiscoveryError``,
``GenerationError``'s ``EngineProtocolError``, ``BackendUnavailable``, ``BackendAuthError``)
stay under these.

Every class with a ``code`` owns that string on the wire (docs/protocol.md, "Error
codes"): a handler that raises it sends the code, and ``error_from_wire`` turns it back
into that class, so a caller catches ``JobNotFound`` whether the store was local or
remote. A subclass that adds no code of its own goes over the wire as its parent.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error mesh raises on purpose."""


class ConfigError(MeshError):
    pass


class IdentityError(MeshError):
    pass


class CertificateError(IdentityError):
    code = "bad_certificate"


class TokenError(IdentityError):
    code = "enrol_refused"


class ModelError(MeshError):
    code = "model_error"


class ModelNotFound(ModelError):
    code = "model_not_found"


class ModelStoreFull(ModelError):
    code = "model_store_full"


class ManifestError(ModelError):
    code = "bad_manifest"


class PullStopped(ModelError):
    code = "pull_stopped"


class LendRefused(ModelError):
    code = "lend_refused"


class SplitUnavailable(ModelError):
    code = "split_unavailable"


class BackendBusy(MeshError):
    code = "busy"


class GenerationError(MeshError):
    code = "generation_failed"


class InvalidRequest(MeshError):
    code = "invalid_request"


class PeerUnavailable(MeshError):
    code = "unavailable"  # on the wire: the peer is shutting down or switching keys; try again


class NoAnswer(MeshError):
    code = "no_answer"


class JobError(MeshError):
    code = "job_error"


class JobNotFound(JobError):
    code = "job_not_found"


class IdempotencyConflict(JobError):
    code = "idempotency_conflict"


class InvalidResult(JobError):
    code = "invalid_result"


class JobStoreError(JobError):
    code = "job_store_error"


class EnvelopeRejected(MeshError):
    """A frame failed envelope checks. ``reason`` is a ``mesh.rpc.envelope.RejectReason``."""

    def __init__(self, reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class RpcError(MeshError):
    code = "rpc_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or self.code)


class DeadlineExceeded(RpcError):
    code = "deadline_exceeded"


class Cancelled(RpcError):
    code = "cancelled"


class RemoteError(RpcError):
    code = "remote_error"


# wire code -> the class that owns it; tests/unit/test_errors.py checks every class with a
# code of its own is here, so a new code cannot be forgotten
_BY_CODE: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        CertificateError, TokenError, ModelError, ModelNotFound, ModelStoreFull, ManifestError, PullStopped,
        LendRefused, SplitUnavailable,
        BackendBusy, GenerationError, InvalidRequest, PeerUnavailable,
        NoAnswer, JobError, JobNotFound, IdempotencyConflict, InvalidResult, JobStoreError, RpcError,
        DeadlineExceeded, Cancelled, RemoteError,
    )
}


def error_from_wire(code: str, message: str) -> MeshError:
    """Map a wire error (code, message) to the class that owns ``code``; a code with no
    class of its own becomes ``RemoteError`` carrying it."""
    cls = _BY_CODE.get(code)
    if cls is None or cls is RemoteError:
        return RemoteError(message, code=code)
    return cls(message)
