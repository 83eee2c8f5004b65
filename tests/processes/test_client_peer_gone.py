"""README: "a peer that went away fails its calls within 5 s (PeerUnavailable) instead of
at their deadline", for a long-lived ``Client`` against a real ``mesh-peer`` process.

Two ways to go away: killed (the kernel closes its sockets) and frozen (SIGSTOP: no
FIN, no reply, as with a pulled cable). Both the call in flight and the next call on the
same client must fail within the README's 5 s; their own deadlines are 300 s."""

import asyncio
import signal

import pytest

from mesh.client import Client
from mesh.errors import PeerUnavailable
from support.peerproc import LONG_PROMPT, PeerProcess

pytestmark = [pytest.mark.model, pytest.mark.subprocess]

PROMISE_S = 5.0  # the README's claim, used as the deadline itself


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_long_lived_clients_calls_fail_within_5s_when_its_peer_goes_away(tmp_path, how):
    p = PeerProcess(tmp_path / "gone")
    try:
        p.wait_ready()

        async def main():
            client = Client(p.data_dir, timeout_s=300)
            try:
                assert (await client.ainfo())["peer"] == p.info["peer_id"]  # connected, and kept
                stream = client.astream(LONG_PROMPT, max_tokens=2000, temperature=0)
                assert await stream.__anext__()  # the answer is streaming
                p.signal(how)
                with pytest.raises(PeerUnavailable):
                    async with asyncio.timeout(PROMISE_S):  # a TimeoutError here breaks the promise
                        async for _ in stream:
                            pass
                # the next call on the same client, to the peer that is still gone
                with pytest.raises(PeerUnavailable):
                    async with asyncio.timeout(PROMISE_S):
                        await client.ainfo(timeout_s=300)
            finally:
                await client.aclose()

        asyncio.run(main())
    finally:
        p.signal(signal.SIGKILL)  # a frozen process ignores SIGTERM until continued
        p.stop()
