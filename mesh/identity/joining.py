"""Becoming a member: create a mesh, or enrol in one with a join token.

- ``create_mesh``: ``mesh init``, and what ``mesh-peer`` does on a device that is in no
  mesh yet (a single-device mesh, so the first run stays one command). Creates the
  authority key here and issues this peer's certificate.
- ``enrol``: ``mesh join TOKEN`` / ``mesh-peer --join-token TOKEN``. Asks the inviting
  peer (over signed RPC, presenting a self-asserted key) to certify this device's key;
  the reply is checked against the token, which is the joiner's trust anchor. This
  device never sees the authority's private key. The call is CurveZMQ-encrypted to the
  inviter's transport key from the token, and asks for a certificate naming this
  device's transport key (the one the connection presents).
- ``serve_enrolment``: the inviting side's public ``mesh.enrol`` method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq.asyncio

from mesh.errors import ConfigError, MeshError, PeerUnavailable, RpcError, TokenError
from mesh.identity.authority import MeshAuthority
from mesh.identity.enrolment import ENROL_METHOD, accept_enrolment, enrol_request, handle_enrol
from mesh.identity.invites import InviteStore
from mesh.identity.keys import Identity
from mesh.identity.membership import MeshMembership
from mesh.identity.peerkeys import self_credential
from mesh.identity.tokens import JoinToken, parse_token
from mesh.identity.transport import TransportKeys
from mesh.identity.trust import StaticKeys
from mesh.paths import DataDir
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.config import RpcConfig
from mesh.rpc.server import CallContext, Method, unary
from mesh.rpc.zap import CurveClient

log = logging.getLogger("mesh.identity.joining")


def load_membership(data: DataDir) -> MeshMembership | None:
    if not data.membership.exists():
        return None
    return MeshMembership.load(data.membership)


def create_mesh(
    data: DataDir, identity: Identity, *, name: str, transport: TransportKeys, now: float | None = None
) -> MeshMembership:
    """A new mesh with this device as its authority and first member."""
    if data.membership.exists():
        raise ConfigError(f"{data.root} is already in a mesh ({data.membership}); use another --data-dir")
    authority = MeshAuthority.create(data.authority_key)
    cert = authority.issue(
        identity.public_raw, name, now=time.time() if now is None else now, curve_public=transport.public
    )
    membership = MeshMembership.from_certificate(cert)
    membership.save(data.membership)
    log.info("created mesh %s; this device holds its authority key (%s)", authority.mesh_id_text, data.authority_key)
    return membership


async def enrol(
    data: DataDir,
    identity: Identity,
    token_text: str,
    *,
    name: str,
    ctx: zmq.asyncio.Context,
    transport: TransportKeys,
    rpc: RpcConfig | None = None,
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> MeshMembership:
    """Join the mesh a token invites to; saves and returns this device's membership."""
    if data.membership.exists():
        raise ConfigError(f"{data.root} is already in a mesh ({data.membership}); use another --data-dir to join another")
    token = parse_token(token_text.strip(), now=clock())
    if not token.inviter_curve:
        raise TokenError(
            "this token carries no transport key: it was made by an older mesh build; "
            "upgrade the inviting device and run `mesh invite` again"
        )
    codec = FrameCodec(
        identity, StaticKeys([token.inviter_public]), config=rpc or RpcConfig.lan(), credential=self_credential(identity)
    )
    failures = []
    for endpoint in token.endpoints:
        client = RpcClient(codec=codec, endpoint=endpoint, ctx=ctx, curve=CurveClient(transport, token.inviter_curve))
        client.connect()
        try:
            request = enrol_request(token, identity, name, now=clock(), curve_public=transport.public)
            reply = await client.call(ENROL_METHOD, request, timeout_s=timeout_s)
        except TokenError:
            raise  # the inviter refused the token itself: another endpoint would too
        except (RpcError, PeerUnavailable) as e:
            failures.append(f"{endpoint}: {e}")
            continue
        finally:
            await client.close()
        membership = accept_enrolment(
            reply, token=token, joiner_public_raw=identity.public_raw, now=clock(), curve_public=transport.public
        )
        membership.save(data.membership)
        log.info("joined mesh %s as %s", token.mesh_id_text, name)
        return membership
    raise PeerUnavailable(
        "could not reach the inviting peer at " + "; ".join(failures)
        + ". Is its mesh-peer running and reachable from here? Ask for a new token if it expired."
    )


def serve_enrolment(data: DataDir, *, clock=time.time) -> Method:
    """The public ``mesh.enrol`` method; only a peer holding the authority key can issue."""

    async def enrol_method(args: dict, ctx: CallContext) -> dict:
        if not data.authority_key.exists():
            raise TokenError("this peer does not hold the mesh authority key; use a token made where `mesh init` ran")
        authority = MeshAuthority.load(data.authority_key)
        if ctx.transport_key is None:  # the certificate must name the key this joiner holds
            raise TokenError("enrolment needs an encrypted connection; upgrade the joining device")
        return handle_enrol(
            args, store=InviteStore(data.invites), authority=authority, now=clock(), sender=ctx.sender,
            transport_key=ctx.transport_key,
        )

    return unary(enrol_method, public=True)


def make_invite(
    data: DataDir, inviter_public_raw: bytes, endpoints: list[str], *, ttl_s: float, now: float,
    inviter_curve: bytes,
) -> JoinToken:
    """A join token naming the running peer (its key and addresses) as the one to enrol with."""
    from mesh.identity.enrolment import create_invite

    if not data.authority_key.exists():
        raise MeshError(
            f"this device does not hold the mesh authority key ({data.authority_key}); "
            "run `mesh invite` on the device where the mesh was created"
        )
    if not endpoints:
        raise MeshError("no address to put in the token: start mesh-peer first (mesh invite reads its addresses)")
    return create_invite(
        store=InviteStore(data.invites), authority=MeshAuthority.load(data.authority_key),
        inviter_public_raw=inviter_public_raw, endpoints=endpoints, now=now, ttl_s=ttl_s, inviter_curve=inviter_curve,
    )
