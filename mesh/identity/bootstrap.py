"""How a peer comes to be in a mesh at start: its membership, its certificate's transport
key, and the transport keys it knows before gossip.

Called once by the composition root (``mesh.peer``), in this order:

1. ``join_or_create_mesh``: ``mesh.json`` if this device is in a mesh; else enrol with a
   join token (over RPC to the inviter); else create a single-device mesh here.
2. ``renew_for_transport``: a certificate that does not name this peer's transport key
   (made by an older build, or ``transport.key`` replaced) is renewed on the authority's
   device, refused elsewhere with what to do.
3. ``join_token_for``, ``initial_keybook``, ``seed_addresses``: the ``--join`` seeds and
   the join token's inviter become pinned transport keys and dialable addresses; a seed
   whose key nothing taught is left out with a warning (CurveZMQ must name the key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import zmq.asyncio

from mesh.discovery.hints import Hint, Source
from mesh.discovery.seeds import RememberedPeers, split_seed_text
from mesh.errors import IdentityError, MeshError
from mesh.identity.authority import MeshAuthority
from mesh.identity.joining import create_mesh, enrol, load_membership
from mesh.identity.keys import Identity, peer_id_from_public, peer_id_text
from mesh.identity.membership import MeshMembership
from mesh.identity.tokens import JoinToken
from mesh.identity.transport import TransportKeys
from mesh.paths import DataDir
from mesh.rpc.config import RpcConfig
from mesh.rpc.keybook import KeyBook, KeySource

log = logging.getLogger("mesh.peer")


async def join_or_create_mesh(
    data: DataDir, identity: Identity, transport: TransportKeys, *, name: str, join_token: str | None,
    ctx: zmq.asyncio.Context, rpc: RpcConfig, clock: Callable[[], float],
) -> MeshMembership:
    membership = load_membership(data)
    if membership is not None:
        if join_token:
            log.warning("already in mesh %s; ignoring --join-token", membership.mesh_id_text)
        return membership
    if join_token:
        return await enrol(data, identity, join_token, name=name, ctx=ctx, rpc=rpc, transport=transport, clock=clock)
    return create_mesh(data, identity, name=name, transport=transport, now=clock())


def renew_for_transport(
    data: DataDir, membership: MeshMembership, certificate, identity: Identity, transport: TransportKeys, *,
    now: float,
) -> MeshMembership:
    """This peer's certificate names no transport key (made by an older build) or
    another one (transport.key was replaced): the authority's device renews it; any
    other device must join again, since only the authority can sign a new one."""
    if not data.authority_key.exists():
        why = "names no transport key (made by an older mesh build)" if not certificate.curve_public else (
            f"names another transport key than {data.transport_key}")
        raise IdentityError(
            f"the certificate in {data.membership} {why}, so other peers would refuse this one. "
            f"On the device that ran `mesh init`, run `mesh invite`; here, move {data.membership} away "
            "and run `mesh join TOKEN` (or `mesh-peer --join-token TOKEN`)"
        )
    authority = MeshAuthority.load(data.authority_key)
    cert = authority.issue(identity.public_raw, certificate.name, now=now, curve_public=transport.public)
    renewed = MeshMembership.from_certificate(cert, seeds=membership.seeds)
    renewed.save(data.membership)
    log.info("renewed this peer's certificate to name its transport key %s", transport.public_text)
    return renewed


def join_token_for(join_token: str | None, membership: MeshMembership) -> JoinToken | None:
    """The ``--join-token`` this peer started with, when it is one of this mesh's that carries
    its inviter's transport key (else None: it taught nothing about keys)."""
    if not join_token:
        return None
    try:
        token = JoinToken.from_text(join_token)
    except MeshError:
        return None
    return token if token.mesh_id == membership.mesh_id and token.inviter_curve else None


def initial_keybook(seeds: Sequence[str], token: JoinToken | None) -> KeyBook:
    """Transport keys known before gossip: ``--join HOST:PORT@KEY`` and the join token's inviter."""
    book = KeyBook()
    for seed in seeds:
        address, key = split_seed_text(seed)
        if key is not None:
            book.learn(address, key, KeySource.PINNED)
    if token is not None:
        for address in token.endpoints:
            book.learn(address, token.inviter_curve, KeySource.PINNED)
    return book


def seed_addresses(
    seeds: Sequence[str], keybook: KeyBook, token: JoinToken | None, remembered: RememberedPeers | None, *,
    now: float,
) -> list[str]:
    """The ``--join`` addresses whose transport key is known. One that nothing taught
    (no token, pinned form, or earlier run) cannot be dialled, since a CurveZMQ
    connection names the server's key: it is left out with a warning saying what to
    write instead. Not an error: in a fixed set of seeds given to every peer, some are
    first met through gossip, which brings their certified keys."""
    if token is not None and remembered is not None:
        # remember the inviter, so a restart without the token still finds the mesh
        inviter = peer_id_text(peer_id_from_public(token.inviter_public))
        remembered.merge(
            Hint(address=a, source=Source.SEED, seen_at=now, peer_id=inviter, transport_key=token.inviter_curve)
            for a in token.endpoints[:1]
        )
    for h in remembered.hints() if remembered is not None else ():
        if h.transport_key is not None:
            keybook.learn(h.address, h.transport_key, KeySource.HINT)
    addresses = [split_seed_text(s)[0] for s in seeds]
    unknown = [a for a in addresses if keybook.key_for(a) is None]
    if unknown:
        log.warning(
            "--join %s: no transport key known for this address, and connections are encrypted to it, so it "
            "is not tried; write --join HOST:PORT@KEY with what `mesh status` shows on that peer "
            "(\"join here with\"), or join with a token, which carries it",
            ", ".join(a.removeprefix("tcp://") for a in unknown),
        )
    return [a for a in addresses if a not in unknown]
