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
    ├── BackendBusy            the backend's bounded queue is full; try later or elsewhere
    ├── GenerationError        the engine failed while generating
    ├── InvalidRequest         a request that cannot be served as asked (bad field, empty prompt)
    ├── EnvelopeRejected       a frame refused by envelope checks (carries a RejectReason)
    ├── PeerUnavailable        no running peer to talk to (with what to do next)
    ├── NoAnswer               nothing in the mesh (or the cloud) could answer this prompt now
    └── RpcError               a call failed; ``code`` says how
        ├── DeadlineExceeded   the call's deadline passed (either side)
        ├── Cancelled          the call was cancelled (by the caller or a shutting-down peer)
        └── RemoteError        the remote side reported an error (code + message)

``RemoteError.code`` uses the same strings the wire uses (see docs/protocol.md), and
``error_from_wire`` turns a wire error back into the most specific local class.
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
    pass


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


def error_from_wire(code: str, message: str) -> MeshError:
    """Map a wire error (code, message) to the most specific local exception."""
    simple = {
        BackendBusy.code: BackendBusy,
        GenerationError.code: GenerationError,
        InvalidRequest.code: InvalidRequest,
        TokenError.code: TokenError,
        NoAnswer.code: NoAnswer,
        CertificateError.code: CertificateError,
        PeerUnavailable.code: PeerUnavailable,
    }
    if code in simple:
        return simple[code](message)
    if code == DeadlineExceeded.code:
        return DeadlineExceeded(message)
    if code == Cancelled.code:
        return Cancelled(message)
    return RemoteError(message, code=code)
