"""Fuzz targets: each feeds one input to a real decoder and enforces the property

    only the decoder's documented refusal may come out (a ``MeshError`` subclass, or its
    documented rejection result); any other exception fails the run.

Hangs and unbounded allocation are caught by the runners: hypothesis' per-example
``deadline`` and atheris' ``-timeout`` / ``-rss_limit_mb`` (and ``test_fuzz_bounds.py``,
which measures peak allocation on hostile length headers).

Used by ``tests/fuzz/test_fuzz_*.py`` (bounded, in CI) and ``bench/fuzz_decoders.py``
(long runs under atheris).
"""

from __future__ import annotations

import base64
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgpack
import seeds

from mesh.api import request_from_ask_args, route_from_args
from mesh.discovery.hints import DropReason, Hint, hint_from_record
from mesh.errors import (
    CertificateError,
    EnvelopeRejected,
    InvalidRequest,
    MeshError,
    TokenError,
)
from mesh.gossip import GossipConfig, Swim
from mesh.gossip import messages as gm
from mesh.gossip.errors import GossipError
from mesh.gossip.record import MemberRecord
from mesh.identity.authority import MeshAuthority
from mesh.identity.certificate import DOMAIN as CERT_DOMAIN
from mesh.identity.certificate import Certificate, verify_certificate
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.enrolment import create_invite, enrol_request, handle_enrol
from mesh.identity.invites import InviteStore
from mesh.identity.tokens import PREFIX, JoinToken, parse_token
from mesh.jobs.job import DEFAULT_LIMITS, encode_request, encode_route
from mesh.jobs.wire import confirm_answer, handover_from_wire, job_id_from_wire, outcomes_from_wire
from mesh.rpc import envelope
from mesh.rpc.messages import REPLY_TYPES, Call, Cancel

REFUSED = object()  # what a target returns when the decoder refused its input properly
GOSSIP_LIMITS = {"max_bytes": 512 * 1024, "max_news": 64, "max_entries": 4097}


def _refused(allowed, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except allowed:
        return REFUSED


# --- RPC envelope ---------------------------------------------------------------------


def envelope_frame(frame: bytes, credential: bytes | None = None) -> Any:
    """Admit a frame as a fresh peer would, then parse its body and args like the server."""
    codec = seeds.receiver_codec()
    env = _refused(EnvelopeRejected, codec.open, frame, credential)
    if env is REFUSED:
        return REFUSED
    assert isinstance(env, envelope.Envelope) and env.kind in envelope.KINDS
    assert isinstance(env.body, dict) and len(env.msg_id) == len(env.nonce) == 16
    if env.kind in ("call", "cast"):
        call = _refused(EnvelopeRejected, Call.from_wire, env.body)
        if call is not REFUSED:
            method_args(call.method, call.args, env.sender)
    elif env.kind == "cancel":
        _refused(EnvelopeRejected, Cancel.from_wire, env.body)
    else:
        _refused(EnvelopeRejected, REPLY_TYPES[env.kind].from_wire, env.body)
    return env


def envelope_payload(payload: bytes, *, signer=seeds.SENDER) -> Any:
    """A payload signed by a trusted key (a hostile but enrolled member): every check
    after the signature runs on it."""
    version = 2 if len(payload) > envelope.PREHASH_ABOVE else 1  # as encode() chooses
    head = envelope.MAGIC + bytes([version]) + signer.peer_id
    frame = head + signer.sign(envelope.signed_bytes(version, head, payload)) + payload
    return envelope_frame(frame)


def method_args(method: str, args: dict, sender: bytes) -> None:
    """The validators a peer runs on a call's args, by method."""
    if method in ("ask", "generate", "job.submit"):
        job_inputs(args.get("ask", args) if method == "job.submit" else args)
    elif method == "job.handover":
        _refused(InvalidRequest, handover_from_wire, args)
    elif method == "job.result":
        _refused(InvalidRequest, outcomes_from_wire, args)
    elif method == "gossip" and isinstance(args.get("d"), bytes):
        gossip_datagram(args["d"], sender=sender)
    elif method == "models.piece":
        model_piece_args(args)


# --- certificates and join tokens -------------------------------------------------------


def certificate(data: bytes) -> Any:
    cert = _refused(CertificateError, verify_certificate, data, authority_public_raw=seeds.AUTHORITY.public_raw,
                    now=seeds.NOW)
    verifier = CertificateVerifier(seeds.AUTHORITY.public_raw)
    again = _refused(CertificateError, verifier.verify, data, now=seeds.NOW)
    assert (cert is REFUSED) == (again is REFUSED)
    if cert is not REFUSED:
        assert isinstance(cert, Certificate) and cert.to_bytes() == data
        assert cert.authority_public == seeds.AUTHORITY.public_raw
    return cert


def certificate_payload(payload: bytes) -> Any:
    """A payload signed by this mesh's authority: the checks after the signature run."""
    return certificate(payload + seeds.AUTHORITY.sign(CERT_DOMAIN + payload))


def token_text(text: str) -> Any:
    token = _refused(TokenError, parse_token, text, now=seeds.NOW)
    if token is not REFUSED:
        assert isinstance(token, JoinToken)
        assert JoinToken.from_text(token.to_text()) == token
    return token


def token_raw(raw: bytes) -> Any:
    """Raw msgpack wrapped as a token: the structure checks run, not only the base32 ones."""
    return token_text(PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower())


# --- gossip ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _gossip_receiver_identity() -> bytes:
    return seeds.corpus().net.authority.new_identity()


def gossip_swim() -> Swim:
    """A fresh ``Swim`` that verifies records as a peer does: real certificates and Ed25519."""
    import random

    net = seeds.corpus().net
    pid = _gossip_receiver_identity()
    own = net.authority.record(pid, name="fuzz-receiver", addresses=("tcp://10.9.9.9:7411",))
    return Swim(own, GossipConfig.for_tests(), now=net.now, rng=random.Random(0),
                sign=net.authority.sign_for(pid), verify_record=net.authority.verify_record)


def gossip_datagram(data: bytes, *, sender: bytes | None = None) -> Any:
    """The codec refuses with ``GossipError`` only; ``Swim.receive`` never raises."""
    decoded = _refused(GossipError, gm.decode, data, **GOSSIP_LIMITS)
    swim = gossip_swim()
    net = seeds.corpus().net
    sender = sender or next(iter(net.peers))
    rejected_before = sum(swim.stats.rejected.values())
    effects = swim.receive(sender, data, net.now, sender_address="tcp://10.0.0.1:7411")
    assert isinstance(effects, list)
    if decoded is REFUSED:
        assert sum(swim.stats.rejected.values()) > rejected_before, "a refused datagram must be counted"
    return decoded


def member_record(data: bytes) -> Any:
    rec = _refused(GossipError, MemberRecord.from_wire, data)
    if rec is not REFUSED:
        assert isinstance(rec, MemberRecord) and MemberRecord.from_parts(rec.to_parts()) == rec
    return rec


# --- discovery hints ------------------------------------------------------------------


MESH_FP = "abcdefghijklmnop"


def mdns_hint(*, name: Any, properties: Any, addresses: Any, port: Any) -> Any:
    out = hint_from_record(name=name, properties=properties, addresses=addresses, port=port, mesh=MESH_FP,
                           own_peer_id=None, now=seeds.NOW)
    assert isinstance(out, (Hint, DropReason))
    if isinstance(out, Hint):
        assert out.address.startswith("tcp://") and out.mesh == MESH_FP
    return out


# --- job and ask inputs --------------------------------------------------------------------


def job_inputs(value: Any) -> None:
    """Every validator of ask, route and job args; each refuses with ``InvalidRequest`` only."""
    if isinstance(value, dict):
        req = _refused(InvalidRequest, request_from_ask_args, value)
        _refused(InvalidRequest, route_from_args, value)
        if req is not REFUSED:
            # accepted input must be storable and sendable: JSON (jobs) and msgpack (RPC)
            text = encode_request(value, DEFAULT_LIMITS)
            assert request_from_ask_args(json.loads(text)) == req
            msgpack.packb(json.loads(text), use_bin_type=True)
    stored = _refused(InvalidRequest, encode_request, value, DEFAULT_LIMITS)
    if stored is not REFUSED:
        assert isinstance(stored, str)
    route = _refused(InvalidRequest, encode_route, value, DEFAULT_LIMITS)
    if route is not REFUSED:
        # what the runner does with a stored route (a falsy non-map such as "" reads as {})
        route_from_args({"route": json.loads(route)})
    _refused(InvalidRequest, handover_from_wire, value)
    _refused(InvalidRequest, outcomes_from_wire, value)
    _refused(InvalidRequest, job_id_from_wire, value)
    assert confirm_answer(value) in (True, False, None)


# --- enrolment (the one method a stranger may call) ------------------------------------------


class _Enrolment:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mesh-fuzz-enrol-"))
        self.authority = MeshAuthority(seeds.AUTHORITY)
        self.store = InviteStore(self.dir / "invites.json")
        token = create_invite(store=self.store, authority=self.authority, inviter_public_raw=seeds.SENDER.public_raw,
                              endpoints=["tcp://127.0.0.1:7411"], now=seeds.NOW, ttl_s=3600)
        self.seed_args = enrol_request(token, seeds.STRANGER, "joiner", now=seeds.NOW)


@lru_cache(maxsize=1)
def enrolment() -> _Enrolment:
    return _Enrolment()


def enrol(args: Any, *, sender: bytes | None = None) -> Any:
    e = enrolment()
    out = _refused(MeshError, handle_enrol, args, store=e.store, authority=e.authority, now=seeds.NOW, sender=sender)
    if out is not REFUSED:
        verify_certificate(out["certificate"], authority_public_raw=seeds.AUTHORITY.public_raw, now=seeds.NOW)
    return out


# --- models: manifests, piece requests, list answers (mesh.models) ----------------------


def model_manifest(value: Any, *, publisher: bytes | None = None) -> Any:
    """A manifest off the wire: a ``Manifest`` whose pieces and sizes agree, or
    ``ManifestError``."""
    from mesh.errors import ManifestError
    from mesh.models.manifest import MAX_PIECES, Manifest

    m = _refused(ManifestError, Manifest.from_wire, value, publisher=publisher)
    if m is not REFUSED:
        assert 0 < len(m.pieces) <= MAX_PIECES and all(len(p) == 32 for p in m.pieces)
        offset, length = m.piece_range(len(m.pieces) - 1)
        assert offset + length == m.size and 0 < length <= m.piece_size
    return m


def model_piece_args(args: Any) -> Any:
    from mesh.models.service import piece_args

    return _refused(InvalidRequest, piece_args, args)


def model_bulk_args(args: Any) -> Any:
    from mesh.models.service import bulk_args

    return _refused(InvalidRequest, bulk_args, args)


def model_bulk_answer(answer: Any) -> Any:
    from mesh.models.service import bulk_answer

    got = bulk_answer(answer)
    if got is not None:
        port, key, ticket = got
        assert 0 < port < 65536 and len(key) == 32 and len(ticket) == 16
    return got


def bulk_stream(data: bytes, key: bytes, limits: dict[int, int]) -> Any:
    """Frames off a bulk piece stream, read as ``mesh.models.bulk`` reads them: a list of
    (kind, plaintext) until the bytes run out (mid-frame: the connection ended), or
    ``BulkStreamError``; every GET is parsed as the source parses it."""
    from mesh.models import bulk_wire as w

    opener = w.Opener(key, limits)

    def read() -> list:
        out, at = [], 0
        while at + w.HEADER.size <= len(data):
            header = data[at:at + w.HEADER.size]
            kind, n = opener.header(header)
            at += w.HEADER.size
            if at + n > len(data):
                break
            plaintext = opener.open(header, data[at:at + n])
            at += n
            assert len(plaintext) <= limits[kind]
            if kind == w.GET:
                w.parse_get(plaintext, pieces=8)
            out.append((kind, plaintext))
        return out

    return _refused(w.BulkStreamError, read)


def model_list_answer(answer: Any) -> Any:
    from mesh.models.service import list_answer

    rows = list_answer(answer)
    if rows is not None:
        assert all(isinstance(r["name"], str) and r["size"] > 0 for r in rows["models"])
    return rows
