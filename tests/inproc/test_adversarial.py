"""Adversarial peers against real peers over real RPC (in-process loopback mesh, scripted
backends): each attack is refused AND counted where `mesh info` / `members` show it,
and honest calls keep succeeding within their deadline meanwhile.

Every connection is CurveZMQ. An attacker on the LAN knows a peer's transport public key
(it is in every certificate gossip carries) and the peer's ZAP handler admits any CURVE
client, so the frame attacks here dial with fresh transport keys of their own
(``adv.lan_attacker``) and are refused by the envelope checks, or by the binding of a
sender to the transport key its certificate names (``bad_transport_key``). A compromised
member holds its own transport keys too (``adv.member_curve``). Attackers that do not
speak CURVE at all (raw TCP noise, plaintext ZeroMQ, slowloris) are refused by ZeroMQ
before mesh sees a frame. Honest clients dial with their own keys, as members do.

Revoked keys: tests/test_revocation_mesh.py. Eavesdropping: tests/test_transport.py.
See docs/security.md.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import zmq.asyncio

from mesh.config import RpcConfig
from mesh.errors import DeadlineExceeded
from mesh.identity.keys import Identity
from mesh.identity.transport import TransportKeys
from mesh.peer import Peer
from mesh.rpc.client import RpcClient
from mesh.rpc.zap import CurveClient
from mesh.testing import ScriptedBackend
from support import adversary as adv
from support import loopmesh
from support.loopmesh import run, wait_for

DEADLINE_S = 5.0


async def mesh_of(tmp_path, n):
    return await loopmesh.start_mesh(tmp_path, [ScriptedBackend(model=f"m{i}") for i in range(n)])


def attacker(ctx, target) -> adv.RawDealer:
    """A DEALER to ``target`` from an attacker on the LAN: fresh transport keys, the
    handshake completes, every frame it sends reaches the envelope checks."""
    return adv.RawDealer(ctx, target.endpoint, curve=adv.lan_attacker(target.transport.public))


def rejections(peer) -> dict[str, int]:
    return peer.server.codec.rejections.snapshot()


def states(peer) -> dict[str, str]:
    return {m.name: m.state for m in peer.membership_service.view()}


async def stop_all(peers, ctx=None, *closers):
    for c in closers:
        r = c.close()
        if asyncio.iscoroutine(r):
            await r
    for p in peers:
        await p.stop()
    if ctx is not None:
        ctx.term()


def test_forged_signatures_are_refused_and_counted(tmp_path):
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        raw = attacker(ctx, p0)
        honest = await adv.honest_client(ctx, p1, p0)
        try:
            before = rejections(p0)["bad_signature"]
            member = adv.member_codec(p1)
            # a member's frame altered (on the wire CURVE would just drop the connection, so
            # the attacker alters a frame it holds and sends it over its own connection)
            await raw.send(adv.tampered(adv.call_frame(member)), p1.membership.certificate)
            # a frame claiming to be p1 (its id in the header), signed by an attacker's key
            impostor = Identity.generate()
            frame = adv.call_frame(adv.codec_of(impostor, credential=None))
            head = frame[:5] + p1.identity.peer_id
            await raw.send(head + frame[21:], p1.membership.certificate)
            assert await raw.replies(member, wait_s=0.3) == []  # refused silently
            await wait_for(lambda: rejections(p0)["bad_signature"] == before + 2, 5)
            assert (await honest.call("ping", {}, timeout_s=DEADLINE_S))["peer"] == p0.identity.peer_id_text
        finally:
            await stop_all([p0, p1], ctx, raw, honest)
    run(main())


def test_a_valid_key_of_another_mesh_is_refused_counted_and_told(tmp_path):
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        raw = attacker(ctx, p0)  # the intruder's CURVE handshake succeeds; its certificate does not
        try:
            intruder, cert = adv.foreign_member()
            codec = adv.codec_of(intruder, credential=cert, trusts=[p0.identity.public_raw])
            before = rejections(p0)["bad_credential"]
            await raw.send(adv.call_frame(codec), cert)
            assert adv.error_codes(await raw.replies(codec, wait_s=2)) == ["rejected:bad_credential"]
            # its gossip (an "alive" record of its own, properly signed) gets no further
            record_news = adv.forged_gossip_about(intruder.peer_id, signer=intruder, credential=cert, incarnation=1)
            await raw.send(codec.seal("cast", {"m": "gossip", "a": {"d": record_news, "a": "tcp://127.0.0.1:9"}}), cert)
            await wait_for(lambda: rejections(p0)["bad_credential"] == before + 2, 5)
            assert "intruder" not in states(p0)
        finally:
            await stop_all([p0, p1], ctx, raw)
    run(main())


def test_replayed_frames_are_refused_on_the_same_and_on_a_new_connection(tmp_path):
    # Under CurveZMQ a LAN eavesdropper captures only boxes; who holds p1's signed frames
    # in clear is a member p1 called (or whoever got into p1's process), and it may replay
    # them over p1's own connection, over a new one with p1's transport keys, or over a
    # connection of its own (other transport keys).
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        as_p1 = adv.member_curve(p1, p0.transport.public)
        first, second = adv.RawDealer(ctx, p0.endpoint, curve=as_p1), adv.RawDealer(ctx, p0.endpoint, curve=as_p1)
        own = attacker(ctx, p0)
        try:
            member = adv.member_codec(p1, trusts=[p0.identity.public_raw])
            frame = adv.call_frame(member)  # a frame the attacker got hold of
            before = rejections(p0)
            await first.send(frame, p1.membership.certificate)
            answered = await first.replies(member, wait_s=2)
            assert [e.kind for e in answered] == ["result"]
            await first.send(frame, p1.membership.certificate)  # same connection
            await second.send(frame, p1.membership.certificate)  # a new connection, p1's transport keys
            # a new connection with the attacker's own transport keys: still counted as a
            # replay, not bad_transport_key, because the nonce check is part of the envelope
            # checks, which run before the transport-key binding (and nothing is told)
            await own.send(frame, p1.membership.certificate)
            for conn in (first, second, own):
                assert await conn.replies(member, wait_s=0.3) == []
            await wait_for(lambda: rejections(p0)["replay"] == before["replay"] + 3, 5)
            assert rejections(p0)["bad_transport_key"] == before["bad_transport_key"]
            # New with encryption: a captured frame p0 has not seen yet, relayed over another
            # transport key, passes the envelope checks but not the binding: refused as
            # bad_transport_key and told; its nonce is spent, so the copy after is a replay.
            fresh = adv.call_frame(member)
            await own.send(fresh, p1.membership.certificate)
            assert adv.error_codes(await own.replies(member, wait_s=2)) == ["rejected:bad_transport_key"]
            assert rejections(p0)["bad_transport_key"] == before["bad_transport_key"] + 1
            await first.send(fresh, p1.membership.certificate)
            await wait_for(lambda: rejections(p0)["replay"] == before["replay"] + 4, 5)
            assert await first.replies(member, wait_s=0.3) == []  # only the first copy was answered
        finally:
            await stop_all([p0, p1], ctx, first, second, own)
    run(main())


def test_a_member_cannot_forge_another_members_state(tmp_path):
    async def main():
        p0, p1, p2 = await mesh_of(tmp_path, 3)
        ctx = zmq.asyncio.Context()
        # p1 is compromised: it has its own key, certificate and transport keys, so its
        # frames pass the binding and reach the gossip handler
        raw = adv.RawDealer(ctx, p0.endpoint, curve=adv.member_curve(p1, p0.transport.public))
        try:
            await wait_for(lambda: states(p0) == {"p0": "alive", "p1": "alive", "p2": "alive"})
            member = adv.member_codec(p1)
            before_transport = rejections(p0)["bad_transport_key"]
            victim = p2.identity.peer_id
            before_records = p0.membership_service.rejected_records
            before_bad = p0.membership_service.swim.stats.rejected["bad_record"]
            attacks = [
                # p2's certificate, p1's signature
                adv.forged_gossip_about(victim, signer=p1.identity, credential=p2.membership.certificate),
                # p1's own certificate, claiming p2's id
                adv.forged_gossip_about(victim, signer=p1.identity, credential=p1.membership.certificate),
            ]
            for data in attacks:
                await raw.send(member.seal("cast", {"m": "gossip", "a": {"d": data, "a": p1.endpoint}}),
                               p1.membership.certificate)
            await wait_for(lambda: p0.membership_service.rejected_records >= before_records + 2, 5)
            assert p0.membership_service.swim.stats.rejected["bad_record"] >= before_bad + 2
            view = {m.name: m for m in p0.membership_service.view()}
            assert "forged" not in view and view["p2"].state == "alive"
            assert all("203.0.113.9" not in a for a in view["p2"].addresses)
            # "dead" is an assertion anyone may make about (id, incarnation): the owner refutes it
            inc = p0.membership_service.swim.member(victim).incarnation
            await raw.send(member.seal("cast", {"m": "gossip", "a": {"d": adv.dead_claim(victim, inc, p1.identity.peer_id),
                                                                      "a": p1.endpoint}}), p1.membership.certificate)
            await wait_for(lambda: (p0.membership_service.swim.member(victim).incarnation > inc
                                    and states(p0)["p2"] == "alive"), 20)
            assert rejections(p0)["bad_transport_key"] == before_transport  # refused by gossip, not by the binding
        finally:
            await stop_all([p0, p1, p2], ctx, raw)
    run(main())


def test_a_garbage_flood_is_counted_while_honest_calls_keep_succeeding(tmp_path):
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        attackers = [attacker(ctx, p0) for _ in range(4)]  # four LAN attackers, each with its own keys
        honest = await adv.honest_client(ctx, p1, p0)
        try:
            await honest.call("ping", {}, timeout_s=DEADLINE_S)
            before = sum(rejections(p0).values())
            n = 1500
            frames = adv.garbage_frames(n, random.Random(3))

            async def flood(sock, part):
                for f in part:
                    await sock.send(f)

            flooding = asyncio.gather(*(flood(a, frames[i::4]) for i, a in enumerate(attackers)))
            latencies = await adv.timed_pings(honest, 20, timeout_s=DEADLINE_S)
            await flooding
            assert len(latencies) == 20 and max(latencies) < DEADLINE_S
            await wait_for(lambda: sum(rejections(p0).values()) - before == n, 10)
            counts = rejections(p0)
            assert counts["malformed"] > 0 and counts["bad_version"] > 0
            assert p0.server.in_flight == 0
        finally:
            await stop_all([p0, p1], ctx, honest, *attackers)
    run(main())


def test_attackers_without_curve_are_dropped_by_zeromq_and_reach_nothing(tmp_path):
    # New with encryption: junk from a client that does not speak CURVE (raw TCP noise, a
    # plaintext ZeroMQ DEALER, a CURVE greeting followed by junk) never becomes a frame:
    # ZeroMQ ends the connection, no mesh counter moves, and honest calls are served.
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        honest = await adv.honest_client(ctx, p1, p0)
        plain = adv.RawDealer(ctx, p0.endpoint, curve=None, monitor=True)
        try:
            await honest.call("ping", {}, timeout_s=DEADLINE_S)
            before = dict(rejections(p0))
            member = adv.member_codec(p1, trusts=[p0.identity.public_raw])
            # (a plaintext DEALER's sends may find no connection to queue on: each one is
            # dropped at the handshake, and ZeroMQ reconnects; those sends are skipped)
            for f in adv.garbage_frames(40, random.Random(7)):
                await plain.try_send(f)
                await asyncio.sleep(0.005)
            await plain.try_send(adv.call_frame(member), p1.membership.certificate)  # even a valid frame
            # ZeroMQ refused its handshake: it offered NULL to a CURVE server
            mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            assert mismatch in await plain.handshake_failures(wait_s=15, until=mismatch)
            tcp = adv.RawTcp(p0.endpoint, 30, random.Random(11))
            try:
                closed = await asyncio.to_thread(tcp.closed_by_peer, 10)
                assert closed == 30, f"only {closed} of 30 junk connections were dropped"
            finally:
                tcp.close()
            latencies = await adv.timed_pings(honest, 10, timeout_s=DEADLINE_S)
            assert len(latencies) == 10
            assert await plain.replies(member, wait_s=0.3) == []
            # had any of it been delivered, the envelope checks or the binding (a plaintext
            # connection names no transport key) would have counted it
            assert rejections(p0) == before and p0.server.in_flight == 0
        finally:
            await stop_all([p0, p1], ctx, honest, plain)
    run(main())


def test_an_endless_flood_does_not_starve_honest_calls_or_gossip(tmp_path):
    # Regression: the server's receive loop never yielded while frames kept arriving
    # (pyzmq completes a recv at once when one is queued), so under a sustained flood
    # no admitted call or gossip handler ran at all.
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        honest = await adv.honest_client(ctx, p1, p0)
        try:
            await wait_for(lambda: states(p0) == {"p0": "alive", "p1": "alive"})
            before = sum(rejections(p0).values())
            frames = [[f] for f in adv.garbage_frames(400, random.Random(5))]
            # LAN attackers with their own transport keys: their junk reaches the envelope checks
            with adv.FloodThread(p0.endpoint, frames, server_public=p0.transport.public) as flood:
                await wait_for(lambda: sum(rejections(p0).values()) > before + 200, 10)
                latencies = await adv.timed_pings(honest, 10, timeout_s=DEADLINE_S)
                assert len(latencies) == 10 and max(latencies) < DEADLINE_S
                heard = sum(p0.membership_service.swim.stats.received.values())
                await asyncio.sleep(1.0)  # ten protocol periods of gossip under the flood
                assert sum(p0.membership_service.swim.stats.received.values()) > heard  # gossip still handled
                assert "dead" not in states(p0).values() and "dead" not in states(p1).values()
            assert flood.sent > 0 and sum(rejections(p0).values()) > before + 200
        finally:
            await stop_all([p0, p1], ctx, honest)
    run(main())


def test_a_peer_flooding_its_caller_does_not_freeze_the_caller(tmp_path):
    # The same starvation on the calling side: a hostile peer streaming junk back at a
    # caller must not stall the caller's event loop (which also runs its own server).
    async def main():
        ctx = zmq.asyncio.Context()
        caller = adv.codec_of(Identity.generate(), credential=None)
        with adv.FloodingServer() as hostile:
            # the caller dials the hostile peer's transport key (as it would a key learnt
            # from a hint); the handshake succeeds, and junk comes back over it
            client = RpcClient(codec=caller, endpoint=hostile.endpoint, ctx=ctx,
                               curve=CurveClient(TransportKeys.generate(), hostile.public))
            client.connect()
            try:
                await client.cast("hello", {})  # the hostile peer starts answering
                lags = []
                for _ in range(50):
                    t0 = time.monotonic()
                    await asyncio.sleep(0.01)
                    lags.append(time.monotonic() - t0)
                assert max(lags) < 0.5, f"the caller's event loop stalled {max(lags):.2f}s"
                with pytest.raises(DeadlineExceeded):
                    await client.call("ping", {}, timeout_s=0.5)  # its deadline still fires
            finally:
                await client.close()
        assert caller.rejections.snapshot()["unknown_sender"] > 100
        ctx.term()
    run(main())


def test_oversized_and_deeply_nested_frames_are_refused_and_counted(tmp_path):
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        raw = attacker(ctx, p0)  # size and depth are judged before the transport-key binding
        honest = await adv.honest_client(ctx, p1, p0)
        try:
            member = adv.member_codec(p1)
            cert = p1.membership.certificate
            max_frame = p0.config.rpc.max_frame_bytes
            before = rejections(p0)
            await raw.send(member.seal("call", {"m": "ping", "a": {"pad": b"\0" * max_frame}}), cert)  # over 1 MiB
            await raw.send(adv.nested_payload_frame(p1.identity, 17), cert)  # just past the body depth limit
            await raw.send(adv.nested_payload_frame(p1.identity, 100_000), cert)  # deeper than the unpacker's stack
            await wait_for(lambda: rejections(p0)["oversize"] == before["oversize"] + 1, 5)
            await wait_for(lambda: (rejections(p0)["bad_field"] + rejections(p0)["malformed"]
                                    == before["bad_field"] + before["malformed"] + 2), 5)
            # far past the limit, ZeroMQ itself drops the message and the connection (not counted by mesh)
            counted = sum(rejections(p0).values())
            huge = attacker(ctx, p0)
            await huge.send(b"\0" * (3 * max_frame))
            await asyncio.sleep(0.5)
            huge.close()
            assert (await honest.call("ping", {}, timeout_s=DEADLINE_S))["peer"] == p0.identity.peer_id_text
            assert sum(rejections(p0).values()) == counted and p0.server.in_flight == 0
        finally:
            await stop_all([p0, p1], ctx, raw, honest)
    run(main())


def test_slowloris_connections_hold_no_call_and_do_not_block_honest_calls(tmp_path):
    async def main():
        p0, p1 = await mesh_of(tmp_path, 2)
        ctx = zmq.asyncio.Context()
        honest = await adv.honest_client(ctx, p1, p0)
        loris = adv.Slowloris(p0.endpoint, 64)  # raw sockets: no CURVE keys, never a HELLO
        try:
            before = dict(rejections(p0))
            latencies = await adv.timed_pings(honest, 10, timeout_s=DEADLINE_S, gap_s=0.05)
            assert max(latencies) < DEADLINE_S
            # a fresh honest connection made while they hang on is served too
            late = await adv.honest_client(ctx, p1, p0)
            assert (await late.call("ping", {}, timeout_s=DEADLINE_S))["peer"] == p0.identity.peer_id_text
            await late.close()
            assert p0.server.in_flight == 0 and rejections(p0) == before  # nothing reached the envelope checks
            assert loris.still_open() > 0  # they were still hanging on meanwhile (handshake timeout: 10 s)
        finally:
            loris.close()
            await stop_all([p0, p1], ctx, honest)
    run(main())


def test_a_connection_that_never_finishes_its_handshake_is_closed(tmp_path):
    async def main():
        p0 = Peer(loopmesh.config(tmp_path, "p0", rpc=RpcConfig(handshake_timeout_s=0.5)), backend=ScriptedBackend())
        await p0.start()
        loris = adv.Slowloris(p0.endpoint, 12)
        try:
            await asyncio.sleep(0.1)
            assert sum(not _closed(s) for s in loris.socks) == 12
            await wait_for(lambda: all(_closed(s) for s in loris.socks), 10)  # the peer hung up on each
        finally:
            loris.close()
            await p0.stop(grace_s=0)
    run(main())


def _closed(sock) -> bool:
    """Whether the other side closed ``sock`` (its greeting read and thrown away)."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(4096) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
