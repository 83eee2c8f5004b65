"""Connections from this peer to other members, for calls that expect answers
(routing a prompt to the peer that will serve it). One DEALER per address, shared by
every call to that peer, closed least-recently-used past ``max_connections``.

Connections are CurveZMQ-encrypted with this peer's ``transport`` keys, to the key
``keybook`` holds for the address (learned from the member's certificate by gossip); an
address with no known key is refused (``PeerUnavailable``) rather than dialled in the
clear."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import zmq.asyncio

from mesh.errors import PeerUnavailable
from mesh.identity.transport import TransportKeys
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.keybook import KeyBook
from mesh.rpc.zap import CurveClient


class PeerPool:
    def __init__(
        self,
        *,
        codec: FrameCodec,
        ctx: zmq.asyncio.Context,
        max_connections: int = 64,
        transport: TransportKeys | None = None,
        keybook: KeyBook | None = None,
    ) -> None:
        self.codec = codec
        self.transport = transport
        self.keybook = keybook
        self._ctx = ctx
        self.max_connections = max_connections
        self._clients: OrderedDict[str, RpcClient] = OrderedDict()
        self._closing: set[asyncio.Task] = set()

    def client(self, address: str) -> RpcClient:
        curve = None
        if self.transport is not None:
            key = self.keybook.key_for(address) if self.keybook is not None else None
            if key is None:
                raise PeerUnavailable(f"no transport key known for {address}: not a member this peer has heard from")
            curve = CurveClient(self.transport, key)
        client = self._clients.get(address)
        if client is not None and client.curve != curve:
            self.drop(address)  # the member behind this address has another key now
            client = None
        if client is None:
            client = RpcClient(codec=self.codec, endpoint=address, ctx=self._ctx, watch=True, curve=curve)
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
