"""Signed msgpack RPC over ZeroMQ: envelope, codec, server, client. See docs/protocol.md."""

from mesh.rpc.client import CallStream, RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.envelope import PROTOCOL_VERSION, Envelope, RejectReason
from mesh.rpc.server import CallContext, Final, Method, RpcServer, oneway, streaming, unary

__all__ = [
    "PROTOCOL_VERSION",
    "CallContext",
    "CallStream",
    "Envelope",
    "Final",
    "FrameCodec",
    "Method",
    "RejectReason",
    "RpcClient",
    "RpcServer",
    "oneway",
    "streaming",
    "unary",
]
