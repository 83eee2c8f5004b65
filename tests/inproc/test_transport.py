"""Encrypted transport between real peers on loopback (scripted backends): what crosses
the network is unreadable, and frames are bound to the CurveZMQ key a sender's
certificate names."""

import asyncio
import dataclasses
import time

import pytest
import zmq.asyncio

from mesh.client import Client
from mesh.discovery.seeds import seed_text
from mesh.errors import DeadlineExceeded, IdentityError, PeerUnavailable, RemoteError
from mesh.identity.authority import MeshAuthority
from mesh.identity.joining import make_invite
from mesh.identity.keys import Identity
from mesh.identity.membership import MeshMembership
from mesh.identity.transport import TransportKeys
from mesh.identity.trust import StaticKeys
from mesh.paths import DataDir
from mesh.peer import Peer
from mesh.rpc import FrameCodec, RpcClient
from mesh.rpc.zap import CurveClient
from mesh.testing import ScriptedBackend
from support.loopmesh import config, run, start_mesh, wait_for
from support.peerproc import free_port

PROMPT = "What is the combination of the vault? Whisper zanzibar-quokka-7731."
ANSWER = ["The", " combination", " is", " marzipan", "-", "ocelot", "-", "4410", "."]


class RecordingProxy:
    """A TCP relay that keeps every byte it forwards, both ways: what a LAN sniffer sees."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen = bytearray()
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader, writer) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    self.seen += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for t in (asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close()


def test_prompt_and_answer_never_cross_the_network_in_clear(tmp_path):
    async def main():
        port = free_port()
        proxy = RecordingProxy(port)
        via = await proxy.start()
        prompts: list[str] = []

        def reply(req):
            prompts.append(req.messages[-1].content)
            return ANSWER

        # p0 is reached by everyone only through the proxy: it advertises the proxy's address
        p0 = Peer(dataclasses.replace(config(tmp_path, "vaultkeeper", advertise=(via,)), rpc_port=port),
                  backend=ScriptedBackend(reply=reply, model="kumquat-model", parameters=1000))
        await p0.start()
        try:
            token = make_invite(DataDir(tmp_path / "vaultkeeper"), p0.identity.public_raw, [via], ttl_s=600, now=time.time(),
                                inviter_curve=p0.transport.public).to_text()
            p1 = Peer(config(tmp_path, "p1", join_token=token, seeds=(via,)),
                      backend=ScriptedBackend(["no"], model="small", parameters=1))
            await p1.start()  # enrolment went through the proxy too
            try:
                await wait_for(lambda: any(m.name == "vaultkeeper" and m.state == "alive" and m.models
                                           for m in p1.membership_service.view()))
                async with Client(p1.data.root) as c:
                    answer = await c.aask(PROMPT, max_tokens=16, peer=p0.identity.peer_id_text)
                assert answer.peer == p0.identity.peer_id_text and answer.text == "".join(ANSWER)
                assert prompts and "zanzibar-quokka-7731" in prompts[0]  # it did travel p1 -> proxy -> p0
            finally:
                await p1.stop()
        finally:
            await p0.stop()
            await proxy.close()
        seen = bytes(proxy.seen)
        assert proxy.connections >= 2 and len(seen) > 2000
        assert b"CURVE" in seen  # the ZMTP greeting names the mechanism; everything after it is boxed
        for secret in ("zanzibar", "quokka", "7731", "vault", "marzipan", "ocelot", "4410", "combination"):
            assert secret.encode() not in seen, f"{secret!r} crossed the network in clear"
        assert b"vaultkeeper" not in seen and b"kumquat" not in seen  # nor do names and models in gossip

    run(main())


async def call_as(identity, credential, target: Peer, *, transport: TransportKeys, server_key=None, timeout_s=5.0):
    ctx = zmq.asyncio.Context()
    codec = FrameCodec(identity, StaticKeys([target.identity.public_raw]), config=target.config.rpc,
                       credential=credential)
    curve = CurveClient(transport, server_key or target.transport.public)
    client = RpcClient(codec=codec, endpoint=target.endpoint, ctx=ctx, curve=curve)
    client.connect()
    try:
        return await client.call("info", {}, timeout_s=timeout_s)
    finally:
        await client.close()
        ctx.term()


def test_a_transport_key_that_the_certificate_does_not_name_is_refused_and_counted(tmp_path):
    async def main():
        a, b = await start_mesh(tmp_path, [ScriptedBackend(), ScriptedBackend()])
        try:
            # b's own keys: served
            info = await call_as(b.identity, b.membership.certificate, a, transport=b.transport)
            assert info["peer"] == a.identity.peer_id_text
            # b's signature and certificate over a connection with a key of someone else's
            # (a relay of b's frames): refused, told, counted
            with pytest.raises(RemoteError) as e:
                await call_as(b.identity, b.membership.certificate, a, transport=TransportKeys.generate())
            assert e.value.code == "rejected:bad_transport_key"
            assert a.server.codec.rejections.snapshot()["bad_transport_key"] == 1
            # the local CLI's key is bound to the transport key derived from it
            cli = Identity.load(a.data.client_key)
            assert (await call_as(cli, None, a, transport=TransportKeys.derived_from(cli)))["peer"]
            with pytest.raises(RemoteError, match="transport"):
                await call_as(cli, None, a, transport=TransportKeys.generate())
            assert a.server.codec.rejections.snapshot()["bad_transport_key"] == 2
            # a caller that names the wrong server key never completes a handshake
            started = a.server.stats.calls_started
            with pytest.raises((DeadlineExceeded, PeerUnavailable)):
                await call_as(b.identity, b.membership.certificate, a, transport=b.transport,
                              server_key=TransportKeys.generate().public, timeout_s=1.0)
            assert a.server.stats.calls_started == started
        finally:
            await b.stop()
            await a.stop()

    run(main())


def test_a_certificate_without_a_transport_key_is_renewed_by_the_authority_or_refused(tmp_path):
    async def main():
        a, b = await start_mesh(tmp_path, [ScriptedBackend(), ScriptedBackend()])
        await b.stop()
        await a.stop()
        authority = MeshAuthority.load(a.data.authority_key)
        for p in (a, b):  # certificates as an older build made them: no CurveZMQ key
            old = authority.issue(p.identity.public_raw, p.config.name, now=time.time())
            MeshMembership.from_certificate(old).save(p.data.membership)
        a2 = Peer(config(tmp_path, "p0"), backend=ScriptedBackend())
        await a2.start()  # holds the authority key: renews its own certificate
        try:
            assert a2.certificate.curve_public == a2.transport.public
            b2 = Peer(config(tmp_path, "p1"), backend=ScriptedBackend())
            with pytest.raises(IdentityError, match="names no transport key.*mesh join"):
                await b2.start()
        finally:
            await a2.stop()

    run(main())


def test_a_join_seed_without_a_known_transport_key_is_not_tried(tmp_path, caplog):
    async def main():
        a = Peer(config(tmp_path, "a"), backend=ScriptedBackend())
        await a.start()
        try:
            bare = Peer(config(tmp_path, "b", seeds=(a.endpoint,)), backend=ScriptedBackend())
            await bare.start()  # another mesh, but nothing reaches a: it cannot name a's key
            await asyncio.sleep(0.5)
            await bare.stop()
            assert "HOST:PORT@KEY" in caplog.text
            assert a.server.codec.rejections.total == 0
            keyed = Peer(config(tmp_path, "c", seeds=(seed_text(a.endpoint, a.transport.public),)),
                         backend=ScriptedBackend())
            await keyed.start()  # reaches a, and is refused by certificate, not by key
            await wait_for(lambda: a.server.codec.rejections.snapshot()["bad_credential"] >= 1)
            await keyed.stop()
        finally:
            await a.stop()

    run(main())


def test_a_call_over_a_stale_transport_key_fails_fast_instead_of_hanging(tmp_path):
    """A peer that dials a member with a key it no longer holds (stale, or the member just
    rotated): TCP connects, the CurveZMQ handshake never completes. The call must fail
    within the connect timeout with PeerUnavailable, not wait for ever in its send."""
    async def main():
        peers = await start_mesh(tmp_path, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
        p0, p1 = peers
        try:
            stale = RpcClient(codec=p1._codec, endpoint=p0.endpoint, ctx=p1._ctx, watch=True, connect_timeout_s=1.0,
                              curve=CurveClient(p1.transport, TransportKeys.generate().public))
            stale.connect()
            started = time.monotonic()
            with pytest.raises(PeerUnavailable, match="handshake|cannot reach"):
                await asyncio.wait_for(stale.call("ping", {}, timeout_s=30), 20)
            assert time.monotonic() - started < 10
            await stale.close()
            good = p1.pool.client(p0.endpoint)  # the right key still works at once
            assert (await good.call("ping", {}, timeout_s=5))["peer"] == p0.identity.peer_id_text
        finally:
            for p in peers:
                await p.stop(grace_s=0)
    run(main())
