"""RPC over real ZeroMQ sockets on loopback: calls, streams, cancel, deadlines, concurrency,
refusals on the wire, and shutdown."""

import asyncio

import pytest
import zmq
import zmq.asyncio

from mesh.config import RpcConfig
from mesh.errors import Cancelled, DeadlineExceeded, RemoteError
from mesh.identity.keys import Identity
from mesh.identity.trust import StaticKeys
from mesh.rpc import Final, FrameCodec, RpcClient, RpcServer, oneway, streaming, unary
from support.builders import pair


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Harness:
    """A server with a few methods, and a client trusted by it."""

    def __init__(self, config=None):
        self.config = config or RpcConfig.for_tests()
        self.client_codec, self.server_codec = pair(self.config)
        self.started = asyncio.Event()
        self.cancelled: list[str] = []
        self.notes: list = []
        self.authenticated = None
        self.finished: list[str] = []

    def methods(self):
        async def echo(args, ctx):
            return {"echo": args, "sender": ctx.sender}

        async def count(args, ctx):
            for i in range(args["n"]):
                yield {"i": i}
            yield Final({"total": args["n"]})

        async def slow(args, ctx):
            self.started.set()
            try:
                for i in range(10_000):
                    await asyncio.sleep(args.get("step", 0.01))
                    yield {"i": i}
            except asyncio.CancelledError:
                self.cancelled.append(args.get("tag", ""))
                raise
            self.finished.append(args.get("tag", ""))

        async def sleepy(args, ctx):
            await asyncio.sleep(args["s"])
            self.finished.append("sleepy")
            return {"slept": args["s"]}

        async def boom(args, ctx):
            raise RuntimeError("handler bug")

        async def note(args, ctx):
            self.notes.append(args["n"])
            if args["n"] == "bug":
                raise RuntimeError("cast handler bug")

        async def enrol(args, ctx):
            return {"welcome": True}

        return {"echo": unary(echo), "count": streaming(count), "slow": streaming(slow),
                "sleepy": unary(sleepy), "boom": unary(boom), "note": oneway(note),
                "enrol": unary(enrol, public=True)}

    async def __aenter__(self):
        self.ctx = zmq.asyncio.Context()
        self.server = RpcServer(codec=self.server_codec, methods=self.methods(), config=self.config, ctx=self.ctx,
                                authenticated=self.authenticated)
        self.endpoint = await self.server.start("tcp://127.0.0.1:0")
        self.client = RpcClient(codec=self.client_codec, endpoint=self.endpoint, ctx=self.ctx)
        self.client.connect()
        return self

    async def __aexit__(self, *exc):
        await self.client.close()
        await self.server.close()
        self.ctx.term()


def test_unary_call():
    async def main():
        async with Harness() as h:
            out = await h.client.call("echo", {"x": [1, "two", b"3"]}, timeout_s=5)
            assert out == {"echo": {"x": [1, "two", b"3"]}, "sender": h.client_codec.identity.peer_id}
    run(main())


def test_stream_chunks_then_result():
    async def main():
        async with Harness() as h:
            async with h.client.stream("count", {"n": 5}, timeout_s=5) as st:
                got = [c["i"] async for c in st]
            assert got == [0, 1, 2, 3, 4] and st.result == {"total": 5}
    run(main())


def test_concurrent_calls_on_one_connection():
    async def main():
        async with Harness() as h:
            async def one(i):
                return await h.client.call("echo", {"i": i}, timeout_s=5)
            outs = await asyncio.gather(*(one(i) for i in range(50)))
            assert [o["echo"]["i"] for o in outs] == list(range(50))
            # interleaved streams keep their chunks apart
            async def collect(n):
                async with h.client.stream("count", {"n": n}, timeout_s=5) as st:
                    return [c["i"] async for c in st]
            outs = await asyncio.gather(*(collect(n) for n in (3, 7, 11)))
            assert outs == [list(range(3)), list(range(7)), list(range(11))]
    run(main())


def test_concurrent_slow_calls_overlap():
    async def main():
        async with Harness() as h:
            t0 = asyncio.get_running_loop().time()
            await asyncio.gather(*(h.client.call("sleepy", {"s": 0.5}, timeout_s=5) for _ in range(8)))
            # eight half-second calls served concurrently, not one after another (4 s)
            assert asyncio.get_running_loop().time() - t0 < 3.0
    run(main())


def test_cancel_stops_the_handler():
    async def main():
        async with Harness() as h:
            st = h.client.stream("slow", {"tag": "a"}, timeout_s=10)
            async for c in st:
                if c["i"] == 3:
                    break
            await st.aclose()
            for _ in range(100):
                if h.cancelled:
                    break
                await asyncio.sleep(0.01)
            assert h.cancelled == ["a"]
            assert h.server.in_flight == 0
            # the connection still serves
            assert (await h.client.call("echo", {}, timeout_s=5))["echo"] == {}
    run(main())


def test_client_deadline_cancels_server_side():
    async def main():
        async with Harness() as h:
            with pytest.raises(DeadlineExceeded):
                async with h.client.stream("slow", {"tag": "d"}, timeout_s=0.3) as st:
                    async for _ in st:
                        pass
            for _ in range(100):
                if h.cancelled:
                    break
                await asyncio.sleep(0.01)
            assert h.cancelled == ["d"]
    run(main())


def test_server_deadline_is_enforced():
    async def main():
        async with Harness() as h:
            # the server caps any caller's deadline at max_timeout_s
            h.server.config = RpcConfig(max_timeout_s=0.2)
            with pytest.raises(DeadlineExceeded):
                await h.client.call("sleepy", {"s": 2}, timeout_s=10)
            assert h.server.stats.by_error["deadline_exceeded"] == 1
            assert "sleepy" not in h.finished
    run(main())


def test_handler_errors_reach_the_caller_and_server_survives():
    async def main():
        async with Harness() as h:
            with pytest.raises(RemoteError) as e:
                await h.client.call("boom", {}, timeout_s=5)
            assert e.value.code == "internal" and "handler bug" in str(e.value)
            with pytest.raises(RemoteError) as e:
                await h.client.call("nope", {}, timeout_s=5)
            assert e.value.code == "unknown_method"
            assert (await h.client.call("echo", {"ok": 1}, timeout_s=5))["echo"] == {"ok": 1}
    run(main())


def test_refused_frames_on_the_wire_are_counted_and_serving_goes_on():
    async def main():
        async with Harness() as h:
            raw = h.ctx.socket(zmq.DEALER)
            raw.connect(h.endpoint)
            good = h.client_codec.seal("call", {"m": "echo", "a": {}})
            tampered = bytearray(good)
            tampered[-1] ^= 1
            stranger = FrameCodec(Identity.generate(), StaticKeys(), config=h.config)
            old = FrameCodec(h.client_codec.identity, StaticKeys(), config=h.config, clock=lambda: 1_000_000.0)
            frames = [
                bytes(tampered),
                stranger.seal("call", {"m": "echo", "a": {}}),
                old.seal("call", {"m": "echo", "a": {}}),
                b"\0" * (h.config.max_frame_bytes + 10),
                b"not msgpack at all",
                good,
                good,  # replay
            ]
            for f in frames:
                await raw.send(f)
            await raw.send_multipart([b"a", b"b"])  # wrong frame count
            # honest traffic keeps flowing
            for i in range(5):
                assert (await h.client.call("echo", {"i": i}, timeout_s=5))["echo"] == {"i": i}
            await asyncio.sleep(0.1)
            counts = h.server_codec.rejections.snapshot()
            assert counts["bad_signature"] == 1
            assert counts["unknown_sender"] == 1
            assert counts["stale_timestamp"] == 1
            assert counts["oversize"] == 1
            assert counts["malformed"] == 2
            assert counts["replay"] == 1
            raw.close(0)
    run(main())


def test_unknown_caller_is_told_at_once():
    async def main():
        async with Harness() as h:
            stranger = FrameCodec(Identity.generate(), StaticKeys([h.server_codec.identity.public_raw]),
                                  config=h.config)
            c = RpcClient(codec=stranger, endpoint=h.endpoint, ctx=h.ctx)
            c.connect()
            with pytest.raises(RemoteError) as e:
                await c.call("echo", {}, timeout_s=10)
            assert e.value.code == "rejected:unknown_sender"
            await c.close()
    run(main())


def test_close_cancels_in_flight_with_an_error_to_the_caller():
    async def main():
        async with Harness() as h:
            st = h.client.stream("slow", {"tag": "s", "step": 0.05}, timeout_s=10)
            await st._ensure_started()
            await h.started.wait()
            await h.server.close(grace_s=0.2)
            with pytest.raises(Cancelled) as e:
                async for _ in st:
                    pass
            assert "shutting down" in str(e.value)
    run(main())


def test_close_lets_short_calls_finish_within_grace():
    async def main():
        async with Harness() as h:
            task = asyncio.create_task(h.client.call("sleepy", {"s": 0.2}, timeout_s=5))
            await asyncio.sleep(0.05)
            await h.server.close(grace_s=2)
            assert (await task) == {"slept": 0.2}
    run(main())


def test_calls_per_connection_are_bounded():
    from mesh.errors import BackendBusy

    async def main():
        async with Harness(RpcConfig(max_calls_per_connection=2)) as h:
            calls = [asyncio.create_task(h.client.call("sleepy", {"s": 0.3}, timeout_s=5)) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(BackendBusy, match="concurrent calls"):
                await h.client.call("echo", {}, timeout_s=5)
            assert [c["slept"] for c in await asyncio.gather(*calls)] == [0.3, 0.3]
            assert (await h.client.call("echo", {"ok": 1}, timeout_s=5))["echo"] == {"ok": 1}
    run(main())


def test_casts_are_one_way_and_a_failing_one_does_not_stop_serving():
    async def main():
        async with Harness() as h:
            for n in [1, "bug", 2]:
                assert await h.client.cast("note", {"n": n})
            assert await h.client.cast("nope", {})  # unknown: dropped, never answered
            assert await h.client.cast("echo", {})  # a call method is not castable
            for _ in range(100):
                if len(h.notes) == 3:
                    break
                await asyncio.sleep(0.01)
            assert h.notes == [1, "bug", 2]
            assert (await h.client.call("echo", {"x": 1}, timeout_s=5))["echo"] == {"x": 1}
            assert h.server.stats.casts_handled == 2 and h.server.stats.casts_dropped == 3
            assert not h.client._pending  # casts leave nothing waiting for a reply
            with pytest.raises(RemoteError, match="no method"):
                await h.client.call("note", {"n": 3}, timeout_s=5)
    run(main())


def test_unauthenticated_senders_reach_only_public_methods():
    async def main():
        h = Harness()
        h.authenticated = lambda sender: False
        async with h:
            assert (await h.client.call("enrol", {}, timeout_s=5)) == {"welcome": True}
            with pytest.raises(RemoteError) as e:
                await h.client.call("echo", {}, timeout_s=5)
            assert e.value.code == "unauthenticated"
            await h.client.cast("note", {"n": 1})
            await asyncio.sleep(0.1)
            assert h.notes == []
    run(main())


def test_a_sender_past_its_rate_is_told_busy_and_counted_while_others_go_on():
    from mesh.errors import BackendBusy
    from support.builders import pair as make_pair

    async def main():
        cfg = RpcConfig(calls_per_sender_per_s=1.0, calls_burst=3, casts_per_sender_per_s=1.0, casts_burst=2)
        async with Harness(cfg) as h:
            for _ in range(3):  # the burst
                await h.client.call("echo", {}, timeout_s=5)
            with pytest.raises(BackendBusy, match="rate limited"):
                await h.client.call("echo", {}, timeout_s=5)
            assert h.server.stats.refused_rate == 1
            # another sender (its own key, trusted by the server) is not held back
            other_codec, _ = make_pair(cfg)
            h.server.codec.resolver.add(other_codec.identity.public_raw)
            other_codec.resolver.add(h.server_codec.identity.public_raw)
            other = RpcClient(codec=other_codec, endpoint=h.endpoint, ctx=h.ctx)
            other.connect()
            try:
                assert (await other.call("echo", {"x": 1}, timeout_s=5))["echo"] == {"x": 1}
            finally:
                await other.close()
            for n in range(5):  # casts past the burst are dropped and counted
                await h.client.cast("note", {"n": n})
            for _ in range(100):
                if h.server.stats.casts_rate_limited == 3:
                    break
                await asyncio.sleep(0.01)
            assert h.notes == [0, 1] and h.server.stats.casts_rate_limited == 3
    run(main())


def test_refusal_notices_have_a_budget_past_which_refusals_are_only_counted():
    async def main():
        async with Harness(RpcConfig(notices_per_s=0.001, notices_burst=2)) as h:
            stranger = FrameCodec(Identity.generate(), StaticKeys([h.server_codec.identity.public_raw]),
                                  config=h.config)
            c = RpcClient(codec=stranger, endpoint=h.endpoint, ctx=h.ctx)
            c.connect()
            for _ in range(2):  # within the budget: told at once
                with pytest.raises(RemoteError, match="unknown_sender"):
                    await c.call("echo", {}, timeout_s=5)
            with pytest.raises(DeadlineExceeded):  # past it: refused and counted, not answered
                await c.call("echo", {}, timeout_s=0.5)
            assert h.server.stats.notices_suppressed == 1
            assert h.server_codec.rejections.snapshot()["unknown_sender"] == 3
            assert (await h.client.call("echo", {"x": 1}, timeout_s=5))["echo"] == {"x": 1}  # honest calls go on
            await c.close()
    run(main())
