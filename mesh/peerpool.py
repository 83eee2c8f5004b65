"""Connections from this peer to other members, for calls that expect answers
(routing a prompt to the peer that will serve it). One DEALER per address, shared by
every call to that peer, closed least-recently-used past ``max_connections``."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import zmq.asyncio

from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec


class PeerPool:
    def __init__(self, *, codec: FrameCodec, ctx: zmq.asyncio.Context, max_connections: int = 64) -> None:
        self.codec = codec
        self._ctx = ctx
        self.max_connections = max_connections
        self._clients: OrderedDict[str, RpcClient] = OrderedDict()
        self._closing: set[asyncio.Task] = set()

    def client(self, address: str) -> RpcClient:
        client = self._clients.get(address)
        if client is None:
            client = RpcClient(codec=self.codec, endpoint=address, ctx=self._ctx, watch=True)
            client.connect()
            self._clients[address] = client
            while len(self._clients) > self.max_connections:
                _, oldest = self._clients.popitem(last=False)
                task = asyncio.get_running_loop().create_task(oldest.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._clients.move_to_end(address)
        return client

    def drop(self, address: str) -> None:
        """Forget a connection that failed, so the next call reconnects."""
        client = self._clients.pop(address, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()
        if self._closing:
            await asyncio.wait(self._closing, timeout=2)
