"""Signed msgpack RPC over ZeroMQ. See docs/protocol.md.

Pure: ``envelope`` (encode, sign, verify, bounds), ``messages`` (call, chunk, result,
error, cancel), ``replay`` (nonce cache), ``rejections`` (counted refusals), ``limits``
(wire size limits), ``ratelimit`` (token buckets), ``config`` (``RpcConfig``), ``faults``
(the seeded loss/delay layer for tests).

Shell: ``codec`` (``FrameCodec``: frames to envelopes with the peer's keys), ``server``
(``RpcServer``), ``client`` (``RpcClient``, ``CallStream``), ``zap`` (CurveZMQ
authentication), ``pool`` (``PeerPool``: one client per peer address), ``keybook``
(which transport key each address has), ``tasks``.
"""

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
