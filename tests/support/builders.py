"""Small builders for test data: identities, codecs, frames."""

from __future__ import annotations

from mesh.config import RpcConfig
from mesh.identity.keys import Identity
from mesh.identity.trust import StaticKeys
from mesh.rpc.codec import FrameCodec


def pair(config: RpcConfig | None = None, *, clock=None):
    """Two identities that trust each other, and a codec for each side."""
    config = config or RpcConfig.for_tests()
    a, b = Identity.generate(), Identity.generate()
    kw = {"clock": clock} if clock else {}
    codec_a = FrameCodec(a, StaticKeys([a.public_raw, b.public_raw]), config=config, **kw)
    codec_b = FrameCodec(b, StaticKeys([a.public_raw, b.public_raw]), config=config, **kw)
    return codec_a, codec_b
