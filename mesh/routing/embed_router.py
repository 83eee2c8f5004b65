"""Routing an embedding request: the shell beside ``Router`` for ``POST /v1/embeddings``,
``mesh embed`` and the RPC method ``embed``.

One rung, no escalation ladder: an embedding has no confidence to judge, and vectors of
two models are not comparable, so a stronger model is no better answer. The peer is
chosen as for a prompt (``choose_route``: fit, available, scored, power of two choices)
among candidates whose model offers ``EMBED`` in its gossiped features (the request's
``needs``), and when it fails or is busy the next fit peer *serving the same model* is
tried (bounded by ``cfg.max_retries``, with the same back-off and circuit breakers as a
prompt): a retry never hands back vectors of another model than the first choice's.

It uses the ``Router``'s state (candidates, reservations, breakers, connection pool,
this peer's backend) so both kinds of request see one picture of the mesh's load.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mesh.errors import BackendBusy, GenerationError, InvalidRequest, MeshError, NoAnswer, PeerUnavailable, RpcError
from mesh.inference.backend import EMBED
from mesh.inference.embedding import EMBED_METHOD, EmbeddingRequest, Embeddings, check_vectors
from mesh.routing.candidate import Candidate
from mesh.routing.choice import choose_route
from mesh.routing.request import RouteRequest
from mesh.routing.retry import retry_plan

log = logging.getLogger("mesh.routing.embed")


def route_for_embedding(request: EmbeddingRequest, *, pinned_model: str | None = None,
                        pinned_peer: str | None = None) -> RouteRequest:
    """What routing needs: a model that embeds. Not the context: an engine embeds each
    input in a context of its own (``mesh.inference.embedder.MAX_TOKENS``) and refuses a
    longer one with a 400 that names its limit, which an estimate here could not."""
    return RouteRequest(prompt_tokens=0, max_tokens=1,
                        pinned_model=pinned_model, pinned_peer=pinned_peer, needs=frozenset({EMBED}))


async def embed_through(router, request: EmbeddingRequest, route: RouteRequest) -> Embeddings:
    """Embed ``request`` on the best fit peer (see the module docstring). ``NoAnswer`` when
    no model in the mesh can embed, ``BackendBusy`` when every one that can is busy,
    ``InvalidRequest`` as the answering engine refused it (an input over its context)."""
    candidates, addresses = router._candidates()
    decision = choose_route(route, candidates, reservations=router.reservations, affinity=None,
                            breakers=router.breakers, now=router._clock(), rng=router._rng, cfg=router.cfg)
    if not decision.ok:
        if decision.busy:
            raise BackendBusy(f"every peer that could embed is busy ({decision.reason}); try again shortly")
        what = f" with model {route.pinned_model!r}" if route.pinned_model else ""
        raise NoAnswer(f"no peer in the mesh can make these embeddings{what}: {decision.reason}: {decision.detail}")
    first = decision.chosen
    errors: list[str] = []
    busy = False
    candidate: Candidate | None = first
    attempt = 0
    while candidate is not None:
        if router.breakers.on_attempt(candidate.peer_id, now=router._clock()):
            router.reservations[candidate.peer_id] += 1
            router.choices[candidate.peer_id] += 1
            try:
                out = await _embed_on(router, candidate, replace(request, model=candidate.model),
                                      addresses.get(candidate.peer_id, []))
            except BackendBusy as e:
                log.info("peer %s busy: %s", candidate.peer_id[:12], e)
                busy = True
            except InvalidRequest:
                raise
            except (RpcError, MeshError, OSError) as e:
                log.warning("peer %s failed to embed: %s", candidate.peer_id[:12], e)
                errors.append(f"{candidate.name or candidate.peer_id[:12]}: {e}")
                router.breakers.record_failure(candidate.peer_id, now=router._clock())
            else:
                router.breakers.record_success(candidate.peer_id, now=router._clock())
                return out
            finally:
                router.reservations[candidate.peer_id] -= 1
                if router.reservations[candidate.peer_id] <= 0:
                    del router.reservations[candidate.peer_id]
        candidate = None
        while True:  # the next fallback serving the first choice's model
            attempt += 1
            nxt, backoff = retry_plan(decision, attempt, cfg=router.cfg, rng=router._rng)
            if nxt is None:
                break
            if nxt.model.casefold() == first.model.casefold():
                await router._clock.sleep(backoff)
                candidate = nxt
                break
    if busy and not errors:
        raise BackendBusy(f"every peer serving {first.model} for embeddings is busy; try again shortly")
    raise NoAnswer(f"no peer could make these embeddings with {first.model}"
                   + (f" (failures: {'; '.join(errors[-3:])})" if errors else ""))


async def _embed_on(router, c: Candidate, request: EmbeddingRequest, addresses: list[str]) -> Embeddings:
    if c.peer_id == router.self_id:
        embed = getattr(router.backend, "embed", None)
        if embed is None:
            raise GenerationError("this peer's backend cannot make embeddings")
        out = await embed(request)
        return replace(out, peer=router.self_id)
    if not addresses:
        raise RpcError(f"no address known for peer {c.peer_id[:12]}")
    vectors: list[bytes] = []
    try:
        client = router.pool.client(addresses[0])
        async with client.stream(EMBED_METHOD, request.to_wire(), timeout_s=router.generate_timeout_s) as st:
            async for chunk in st:
                v = chunk.get("v")
                if not isinstance(v, list):
                    raise GenerationError(f"peer {c.peer_id[:12]} sent an embedding chunk without vectors")
                vectors += v
            final = dict(st.result or {})
    except (RpcError, PeerUnavailable):
        router.pool.drop(addresses[0])
        raise
    tokens = final.get("prompt_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise GenerationError(f"peer {c.peer_id[:12]} sent no token count with its embeddings")
    try:
        checked = check_vectors(vectors, count=len(request.texts))
    except ValueError as e:
        raise GenerationError(f"peer {c.peer_id[:12]} sent bad vectors: {e}") from None
    return Embeddings(checked, model=str(final.get("model") or c.model), prompt_tokens=tokens, peer=c.peer_id)
