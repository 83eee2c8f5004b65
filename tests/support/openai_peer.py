"""One real `mesh-peer` with the default model, serving the OpenAI API, and the real
`openai` SDK pointed at it: what the request-option tests (stop, logprobs, JSON, tools)
share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai

from support.peerproc import PeerProcess


@contextmanager
def openai_peer(data: Path) -> Iterator[dict]:
    """A peer named alpha on ``data``: ``{"url", "data", "proc"}`` while it runs."""
    p = PeerProcess(data, "--name", "alpha", "--ctx", "2048", "--threads", "1")
    try:
        info = p.wait_ready()
        yield {"url": info["http"], "data": data, "proc": p}
    finally:
        p.stop()


def openai_client(peer: dict) -> openai.OpenAI:
    """The SDK on that peer: loopback needs no key; no retries, so a 400 is seen as one."""
    return openai.OpenAI(base_url=peer["url"] + "/v1", api_key="loopback", max_retries=0, timeout=120)
