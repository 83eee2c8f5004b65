"""A lending peer's service (mesh.inference.lending) with a real ggml RPC server process
and a real tunnel server: what lend.reserve grants and refuses (each refusal counted by
its reason), and what happens when the holder leaves or the server process dies."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from mesh.errors import LendRefused
from mesh.gossip.view import MemberView
from mesh.identity.keys import peer_id_text
from mesh.identity.transport import TransportKeys
from mesh.inference.lending import MB, LendingService
from mesh.rpc.server import CallContext
from support.loopmesh import run

pytestmark = [pytest.mark.subprocess]

A, B = b"\x01" * 16, b"\x02" * 16
KEY_A, KEY_B = TransportKeys.generate().public, TransportKeys.generate().public


def _ctx(sender: bytes, key: bytes | None) -> CallContext:
    return CallContext(sender=sender, call_id=b"c", transport_key=key)


def _alive(*senders: bytes) -> list[MemberView]:
    return [MemberView(peer_id=peer_id_text(s), name="m", state="alive") for s in senders]


def test_reservations_granted_and_refused_for_their_reasons(tmp_path):
    members = _alive(A, B)
    revoked: set[bytes] = set()

    async def main():
        svc = LendingService(offer_bytes=40 * MB, cache_dir=tmp_path / "cache", transport=TransportKeys.generate(),
                             members=lambda: members, refuse_key=lambda k: k in revoked, threads=1, check_s=0.1,
                             build="build-1")
        await svc.start("127.0.0.1")
        try:
            assert svc.info().offer_mb == 40 and svc.info().free_mb == 40
            first_server = svc.lender.pid
            ok = await svc._reserve({"bytes": 30 * MB, "build": "build-1"}, _ctx(A, KEY_A))
            assert len(ok["token"]) == 32 and ok["port"] == svc.tunnel.port and svc.info().free_mb == 10
            assert svc.lender.pid == first_server and svc.fresh_servers == 0  # the first one gets the server as started
            refusals = [
                ({"bytes": 1, "build": "build-1"}, _ctx(B, KEY_B), "busy"),  # one borrower at a time
                ({"bytes": 41 * MB, "build": "build-1"}, _ctx(A, KEY_A), "too_much"),
                ({"bytes": 1, "build": "build-2"}, _ctx(A, KEY_A), "build"),
                ({"bytes": 1, "build": "build-1"}, _ctx(A, None), "no_key"),
                ({"bytes": -5, "build": "build-1"}, _ctx(A, KEY_A), "bad_request"),
                ({"bytes": True, "build": "build-1"}, _ctx(A, KEY_A), "bad_request"),
            ]
            for args, ctx, reason in refusals:
                with pytest.raises(LendRefused):
                    await svc._reserve(args, ctx)
                assert svc.refused[reason] >= 1, reason
            # the holder plans again: its new reservation replaces the first
            again = await svc._reserve({"bytes": 20 * MB, "build": "build-1"}, _ctx(A, KEY_A))
            assert svc.info().free_mb == 20 and again["token"] != ok["token"]
            # on a fresh ggml server (the old one keeps what its last client had), the tunnel follows it
            assert svc.lender.pid != first_server and svc.fresh_servers == 1 and svc.lender.alive()
            assert svc.tunnel.target_port == svc.lender.port
            # only the holder releases it
            assert (await svc._release({"token": again["token"]}, _ctx(B, KEY_B)))["released"] is False
            assert (await svc._release({"token": again["token"]}, _ctx(A, KEY_A)))["released"] is True
            assert svc.info().free_mb == 40
            # a holder that is no longer a live member loses its reservation
            await svc._reserve({"bytes": 10 * MB, "build": "build-1"}, _ctx(B, KEY_B))
            members[1] = MemberView(peer_id=peer_id_text(B), name="m", state="dead")
            for _ in range(50):
                if svc.info().free_mb == 40:
                    break
                await asyncio.sleep(0.1)
            assert svc.info().free_mb == 40
            # a holder revoked by the mesh authority loses it too (and its streams close)
            await svc._reserve({"bytes": 10 * MB, "build": "build-1"}, _ctx(A, KEY_A))
            revoked.add(KEY_A)
            for _ in range(50):
                if svc.info().free_mb == 40:
                    break
                await asyncio.sleep(0.1)
            assert svc.info().free_mb == 40
            # the ggml RPC server dies: it is started again (on a new port), the tunnel follows
            old = svc.lender.pid
            os.kill(old, signal.SIGKILL)
            for _ in range(100):
                if svc.restarts and svc.lender.alive():
                    break
                await asyncio.sleep(0.1)
            assert svc.restarts == 1 and svc.lender.pid != old and svc.tunnel.target_port == svc.lender.port
        finally:
            await svc.aclose()
        assert not svc.lender.alive()

    run(main(), 90)
