"""``NoModel``: the backend of a peer started with ``--no-model``.

Such a peer takes part in the mesh (gossip, routing, jobs, the HTTP API, the CLI) and
answers every prompt entered at it through other members, but generates nothing
itself: a router on a small device, or an entry peer in tests where every ask must
really route. Its member record offers no model; ``status()`` says why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mesh.errors import GenerationError
from mesh.inference.backend import Capabilities, EngineStatus, FinalStats, GenerationRequest, Load, TextChunk

REASON = "this peer was started with --no-model: it routes prompts to other members"


class NoModel:
    def __init__(self, *, queue_limit: int = 0) -> None:
        self._caps = Capabilities(model="", parameters=0, quantisation="", context_length=0, tokens_per_s=0.0,
                                  parallel=0, queue_limit=queue_limit, extra={"engine": "none"})

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def load(self) -> Load:
        return Load(running=0, waiting=0)

    def status(self) -> EngineStatus:
        return EngineStatus(state="off", reason=REASON)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        request.validate()
        raise GenerationError(f"no model here: {REASON}")
        yield  # pragma: no cover  (makes this an async generator)

    async def aclose(self) -> None:
        return None
