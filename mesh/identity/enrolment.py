"""Enrolment: a device holding a join token gets a certificate from the inviting peer.

    joiner                                         inviter (holds the authority key)
    enrol_request(token, identity, name, now) --->  handle_enrol(args, store, authority, now)
                                                      checks args, redeems the invite once,
    accept_enrolment(reply, token, ...)       <---    issues a certificate
    -> MeshMembership (save as mesh.json)

Request args (a msgpack map; ONLY APPEND KEYS, unknown keys are ignored)::

    invite_id     bin16  invite_id_for(token secret)
    proof         bin32  enrol_proof(secret, joiner key, name, ts, curve key)
    public_key    bin32  the joiner's Ed25519 public key: the certificate is for it
    name          str    1..64 printable characters
    ts            int    the joiner's clock, seconds
    curve_public  bin    the joiner's CurveZMQ public key, 32 bytes (empty from older builds);
                         the inviter requires it to be the key the request's connection
                         presented (``transport_key=``), so it cannot be a key the joiner
                         does not hold

Reply: ``{certificate: bin, authority_public: bin32, mesh_id: bin16}``.

The joiner trusts the reply only as far as the token says: the certificate must verify
against the token's authority key and name the joiner's own keys. This module is pure
apart from the invite store it is handed; RPC wiring (method ``ENROL_METHOD``) lives
with the peer. Such a request comes from a sender no one trusts yet, so the peer must
admit it specially; passing ``sender=`` (the envelope's sender id) makes
``handle_enrol`` require that the frame was signed by the key being enrolled.
"""

from __future__ import annotations

from typing import Any

from mesh.errors import CertificateError, TokenError
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import KEY_BYTES, check_name, verify_certificate
from mesh.identity.invites import DEFAULT_INVITE_TTL_S, InviteStore
from mesh.identity.keys import Identity, peer_id_from_public
from mesh.identity.membership import MeshMembership
from mesh.identity.tokens import (
    INVITE_ID_BYTES,
    MAX_ENDPOINTS,
    PROOF_BYTES,
    JoinToken,
    check_endpoint,
    enrol_proof,
    parse_token,
)

ENROL_METHOD = "mesh.enrol"


def create_invite(
    *,
    store: InviteStore,
    authority: MeshAuthority,
    inviter_public_raw: bytes,
    endpoints: list[str] | tuple[str, ...],
    now: float,
    ttl_s: float = DEFAULT_INVITE_TTL_S,
    inviter_curve: bytes = b"",
) -> JoinToken:
    """Open an invite and the token that carries it (``mesh invite``)."""
    if len(endpoints) > MAX_ENDPOINTS:
        raise TokenError(f"a token carries at most {MAX_ENDPOINTS} endpoints")
    for ep in endpoints:  # checked before an invite is opened for a token that cannot be printed
        problem = check_endpoint(ep)
        if problem:
            raise TokenError(problem)
    invite = store.create(now=now, ttl_s=ttl_s)
    return JoinToken.new(
        mesh_id=authority.mesh_id,
        authority_public=authority.public_raw,
        inviter_public=inviter_public_raw,
        endpoints=endpoints,
        secret=invite.secret,
        expires_at=invite.expires_at,
        inviter_curve=inviter_curve,
    )


def enrol_request(
    token: JoinToken | str,
    joiner: Identity,
    name: str,
    *,
    now: float,
    curve_public: bytes = b"",
) -> dict[str, Any]:
    """The args of the enrol call. Refuses an expired token or a bad name before anything is sent."""
    if isinstance(token, str):
        token = parse_token(token, now=now)
    elif now >= token.expires_at:
        raise TokenError("expired token: ask for a new `mesh invite`")
    problem = check_name(name)
    if problem:
        raise TokenError(problem)
    if len(curve_public) not in (0, KEY_BYTES):
        raise TokenError(f"a CurveZMQ public key is {KEY_BYTES} bytes")
    ts = int(now)
    proof = enrol_proof(token.secret, joiner_public_raw=joiner.public_raw, name=name, ts=ts, curve_public=curve_public)
    return {
        "invite_id": token.invite_id,
        "proof": proof,
        "public_key": joiner.public_raw,
        "name": name,
        "ts": ts,
        "curve_public": curve_public,
    }


def _bytes(args: dict, key: str, sizes: tuple[int, ...]) -> bytes:
    value = args.get(key)
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise TokenError(f"malformed enrol request: {key!r} must be {' or '.join(map(str, sizes))} bytes")
    return value


def handle_enrol(
    args: Any,
    *,
    store: InviteStore,
    authority: MeshAuthority,
    now: float,
    sender: bytes | None = None,
    transport_key: bytes | None = None,
    ttl_s: float = DEFAULT_CERT_TTL_S,
) -> dict[str, Any]:
    """Check an enrol request, spend its invite, and issue the joiner's certificate."""
    if not isinstance(args, dict):
        raise TokenError("malformed enrol request: args must be a map")
    invite_id = _bytes(args, "invite_id", (INVITE_ID_BYTES,))
    proof = _bytes(args, "proof", (PROOF_BYTES,))
    public_key = _bytes(args, "public_key", (KEY_BYTES,))
    curve_public = _bytes(args, "curve_public", (0, KEY_BYTES)) if "curve_public" in args else b""
    name = args.get("name")
    problem = check_name(name)
    if problem:
        raise TokenError(f"malformed enrol request: {problem}")
    ts = args.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise TokenError("malformed enrol request: 'ts' must be an int")
    if sender is not None and sender != peer_id_from_public(public_key):
        raise TokenError("enrol request not signed by the key it enrols")
    if transport_key is not None and curve_public != transport_key:
        raise TokenError("enrol request names another transport key than its connection presents")
    # Everything that could refuse the request is checked above, so an invite is never
    # spent on a request that then fails.
    store.redeem(invite_id, proof, public_key, name, ts, now=now, curve_public=curve_public)
    cert = authority.issue(public_key, name, now=now, ttl_s=ttl_s, curve_public=curve_public)
    return {"certificate": cert, "authority_public": authority.public_raw, "mesh_id": authority.mesh_id}


def accept_enrolment(
    reply: Any,
    *,
    token: JoinToken,
    joiner_public_raw: bytes,
    now: float,
    curve_public: bytes = b"",
) -> MeshMembership:
    """Check the inviter's reply against the token (the joiner's trust anchor) and this device's keys."""
    if not isinstance(reply, dict) or not all(
        isinstance(reply.get(k), bytes) for k in ("certificate", "authority_public", "mesh_id")
    ):
        raise TokenError("malformed enrol reply")
    if reply["authority_public"] != token.authority_public or reply["mesh_id"] != token.mesh_id:
        raise TokenError("enrol reply names another mesh than the token")
    cert = verify_certificate(reply["certificate"], authority_public_raw=token.authority_public, now=now)
    if cert.peer_public != joiner_public_raw or cert.curve_public != curve_public:
        raise CertificateError("the issued certificate is not for this device's keys")
    return MeshMembership.from_certificate(cert.to_bytes(), seeds=token.endpoints)
