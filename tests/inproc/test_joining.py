"""Creating a mesh, inviting, enrolling with a token, and who gets admitted — real peers
on loopback (scripted backends, so no model load)."""

import asyncio
import time

import pytest
import zmq.asyncio

from mesh.config import PeerConfig, RpcConfig
from mesh.errors import RemoteError, TokenError
from mesh.identity.joining import make_invite
from mesh.identity.keys import Identity
from mesh.identity.membership import MeshMembership
from mesh.identity.peerkeys import self_credential
from mesh.identity.transport import TransportKeys
from mesh.identity.trust import StaticKeys
from mesh.paths import DataDir
from mesh.peer import Peer
from mesh.rpc import FrameCodec, RpcClient
from mesh.rpc.zap import CurveClient
from mesh.testing import ScriptedBackend


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def peer(tmp_path, name, **kw) -> Peer:
    config = PeerConfig(data_dir=tmp_path / name, rpc_host="127.0.0.1", rpc_port=0, name=name, mdns=False, **kw)
    return Peer(config, backend=ScriptedBackend(model=f"model-{name}"))


async def call_as(identity, credential, target: Peer, method="info", args=None, *, transport=None):
    ctx = zmq.asyncio.Context()
    codec = FrameCodec(identity, StaticKeys([target.identity.public_raw]), config=RpcConfig.for_tests(),
                       credential=credential)
    curve = CurveClient(transport or TransportKeys.generate(), target.transport.public)
    client = RpcClient(codec=codec, endpoint=target.endpoint, ctx=ctx, curve=curve)
    client.connect()
    try:
        return await client.call(method, args or {}, timeout_s=5)
    finally:
        await client.close()
        ctx.term()


def test_first_start_creates_a_single_device_mesh(tmp_path):
    async def main():
        a = peer(tmp_path, "a")
        await a.start()
        try:
            data = DataDir(tmp_path / "a")
            assert data.authority_key.exists() and data.membership.exists()
            m = MeshMembership.load(data.membership)
            assert m.verify(peer_public_raw=a.identity.public_raw, now=time.time()).name == "a"
        finally:
            await a.stop()
        # a restart keeps the same mesh
        a2 = peer(tmp_path, "a")
        await a2.start()
        assert a2.membership.mesh_id == m.mesh_id
        await a2.stop()
    run(main())


def test_join_with_a_token_then_talk_as_a_certified_member(tmp_path):
    async def main():
        a = peer(tmp_path, "a")
        await a.start()
        try:
            token = make_invite(DataDir(tmp_path / "a"), a.identity.public_raw, [a.endpoint], ttl_s=600,
                                now=time.time(), inviter_curve=a.transport.public).to_text()
            b = peer(tmp_path, "b", join_token=token)
            await b.start()
            try:
                assert b.membership.mesh_id == a.membership.mesh_id
                assert not (tmp_path / "b" / "authority.key").exists()  # never sees the authority key
                # b, certified, may call a's methods; a learns b's key from b's certificate
                info = await call_as(b.identity, b.membership.certificate, a, transport=b.transport)
                assert info["peer"] == a.identity.peer_id_text
            finally:
                await b.stop()
            # the token was single-use
            c = peer(tmp_path, "c", join_token=token)
            with pytest.raises(TokenError, match="used"):
                await c.start()
        finally:
            await a.stop()
    run(main())


def test_other_mesh_and_uncertified_keys_are_not_admitted(tmp_path):
    async def main():
        a = peer(tmp_path, "a")
        other = peer(tmp_path, "other")  # creates its own mesh
        await a.start()
        await other.start()
        try:
            with pytest.raises(RemoteError) as e:
                await call_as(other.identity, other.membership.certificate, a)
            assert e.value.code == "rejected:bad_credential" and "mesh" in str(e.value)
            assert a.server.codec.rejections.snapshot()["bad_credential"] == 1
            stranger = Identity.generate()
            with pytest.raises(RemoteError) as e:  # a self-asserted key reaches public methods only
                await call_as(stranger, self_credential(stranger), a)
            assert e.value.code == "unauthenticated"
            with pytest.raises(TokenError):  # and enrolment wants a real invite
                await call_as(stranger, self_credential(stranger), a, "mesh.enrol", {"invite_id": b"x"})
        finally:
            await a.stop()
            await other.stop()
    run(main())
