"""The embeddable client: talk to a running peer, or run one in-process.

Blocking::

    from mesh import Client
    with Client() as client:                      # the peer started by `mesh-peer`
        answer = client.ask("Name three fruits.", max_tokens=32)
        print(answer.text, answer.peer, answer.confidence)

Async streaming::

    async with Client() as client:
        stream = client.astream("Write a haiku about routers.")
        async for text in stream:
            print(text, end="", flush=True)
        print(stream.answer.confidence)

Request options (routed only to peers whose engine honours them)::

    client.ask("List three fruits.", stop=["\n\n"])            # ends before a blank line
    a = client.ask("Hi", logprobs=True, top_logprobs=3)          # a.logprobs: OpenAI's logprobs.content
    a = client.ask("A city as JSON", json_schema={"type": "object", "properties": {"name": {"type": "string"}}})
    json.loads(a.text)                                           # always parses (unless max_tokens ran out)

Embeddings (unit-length vectors, from a model in the mesh that can embed)::

    vectors = client.embed(["The cat sits on the mat.", "A kitten on a rug."])  # list[list[float]]

In-process (no second terminal; loads the model in this process)::

    with Client.embedded() as client:
        print(client.ask("hello").text)

A ``Client`` finds its local peer through ``peer.json`` in the data dir (``--data-dir``,
``MESH_HOME``, or the per-user default) and signs with the data dir's ``client.key``,
which the peer trusts. Every call goes over the signed RPC protocol, embedded or not,
CurveZMQ-encrypted to the peer's transport key from ``peer.json`` with the X25519 key
derived from ``client.key`` (``mesh.identity.transport``), which the peer binds to it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq.asyncio

from mesh.api import Answer, answer_from_wire, ask_args, route_args
from mesh.config import PeerConfig
from mesh.errors import ConfigError, DeadlineExceeded, IdentityError, MeshError, PeerUnavailable
from mesh.identity.keys import Identity
from mesh.identity.transport import TransportKeys
from mesh.identity.trust import StaticKeys
from mesh.inference.backend import GenerationRequest
from mesh.inference.embedding import EmbeddingRequest, Embeddings, check_vectors
from mesh.inference.logprobs import entries_from_wire
from mesh.inference.output_format import OutputFormat, grammar_text
from mesh.inference.stops import check_stop
from mesh.paths import resolve_data_dir
from mesh.peerfile import HOW_TO_START, PeerAddress, read_peer_file  # noqa: F401  (PeerAddress re-exported)
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.config import RpcConfig
from mesh.rpc.zap import CurveClient

# a local peer whose connection does not come up (handshake included) in this is
# unavailable; under the README's "fails its calls within 5 s", with room for the call
CONNECT_TIMEOUT_S = 4.0

class AnswerStream:
    """Async iterator over an answer's text pieces; ``answer`` is set when it ends.

    ``steps`` lists the routing steps the peer reported (who, which model, why). When a
    step says ``restart`` (a retry after a peer failed mid-stream, or an escalation to a
    stronger model or the cloud), the text streamed so far is being replaced:
    ``on_step`` is called with it, so a caller can clear what it printed."""

    def __init__(
        self, client: "Client", request: GenerationRequest, timeout_s: float, route: dict | None = None,
        on_step: Callable[[dict], None] | None = None,
    ) -> None:
        self._client = client
        self._request = request
        self._timeout_s = timeout_s
        self._route = route or {}
        self._on_step = on_step
        self._rpc: RpcClient | None = None
        self._call = None
        self._parts: list[str] = []
        self._logprobs: list = []  # wire entries of the current attempt's tokens
        self.steps: list[dict] = []
        self.answer: Answer | None = None
        self._retried = False

    def __aiter__(self) -> "AnswerStream":
        return self

    async def _start(self) -> None:
        self._rpc = await self._client._connection()
        args = ask_args(self._request)
        if self._route:
            args["route"] = self._route
        self._call = self._rpc.stream("ask", args, timeout_s=self._timeout_s)

    async def __anext__(self) -> str:
        if self._call is None:
            await self._start()
        while True:
            try:
                chunk = await self._call.__anext__()
            except StopAsyncIteration:
                final = dict(self._call.result or {})
                if self._request.logprobs:  # the final leaves them out: they came with the text
                    final["logprobs"] = self._logprobs
                self.answer = answer_from_wire("".join(self._parts), final)
                raise
            except PeerUnavailable:
                # nothing came yet and the peer is elsewhere now (it restarted, or is
                # switching to new keys: `mesh rotate`): ask it there, once
                if self._retried or self.steps or self._parts or not await self._client._peer_moved():
                    raise
                self._retried = True
                await self._start()
                continue
            step = chunk.get("step")
            if isinstance(step, dict):
                self.steps.append(step)
                if step.get("restart"):
                    self._parts.clear()
                    self._logprobs.clear()
                if self._on_step is not None:
                    self._on_step(step)
                continue
            text = chunk.get("t")
            if self._request.logprobs and "lp" in chunk:
                self._logprobs += entries_from_wire(chunk["lp"])
            if isinstance(text, str) and text:
                self._parts.append(text)
                return text

    async def aclose(self) -> None:
        """Stop early: the peer is told to cancel generation."""
        if self._call is not None:
            await self._call.aclose()


class Client:
    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        timeout_s: float = 300.0,
        rpc_config: RpcConfig | None = None,
    ) -> None:
        self.data = resolve_data_dir(data_dir)
        self.timeout_s = timeout_s
        self.rpc_config = rpc_config or RpcConfig.lan()
        self._conn: tuple[asyncio.AbstractEventLoop, zmq.asyncio.Context, RpcClient] | None = None
        self._embedded: _EmbeddedPeer | None = None
        self.address: PeerAddress | None = None
        self._peer_file_stamp: int | None = None  # peer.json's mtime when it was last read
        self._conn_address: PeerAddress | None = None  # where the open connection goes

    # -- embedded peer -------------------------------------------------------------------

    @classmethod
    def embedded(
        cls,
        data_dir: str | os.PathLike | None = None,
        *,
        model: str | os.PathLike | None = None,
        n_ctx: int = 2048,
        backend_factory: Callable[[PeerConfig], Any] | None = None,
        timeout_s: float = 300.0,
    ) -> "Client":
        """Start a peer in this process (on a free loopback port) and a client for it."""
        client = cls(data_dir, timeout_s=timeout_s)
        config = PeerConfig(
            data_dir=client.data.root, rpc_host="127.0.0.1", rpc_port=0, model_path=Path(model) if model else None,
            n_ctx=n_ctx, write_peer_file=False, shutdown_grace_s=1.0, mdns=False, jobs=False,
        )
        client._embedded = _EmbeddedPeer(config, backend_factory)
        client.address = client._embedded.start()
        return client

    # -- connection ----------------------------------------------------------------------

    def _resolve(self) -> PeerAddress:
        """Where the peer is. A running mesh-peer's file is read again whenever it changed
        (the peer restarted, or rotated its keys with ``mesh rotate``)."""
        if self._embedded is not None:
            return self.address
        stamp = self._peer_file_now()
        if self.address is None or stamp != self._peer_file_stamp:
            self.address = read_peer_file(self.data)
            self._peer_file_stamp = stamp
        return self.address

    async def _connection(self) -> RpcClient:
        loop = asyncio.get_running_loop()
        addr = self._resolve()
        if self._conn is not None and self._conn[0] is loop and self._conn_address == addr:
            return self._conn[2]
        if self._conn is not None and self._conn[0] is loop:  # the peer has new keys or a new address
            await self.aclose()
        if not addr.transport_public:
            raise PeerUnavailable(
                f"{self.data.peer_file} names no transport key: the running mesh-peer is an older version; restart it"
            )
        try:
            identity = Identity.load(self.data.client_key)
        except IdentityError as e:
            raise PeerUnavailable(f"{e}; a peer creates the client key on its first start; {HOW_TO_START}") from None
        codec = FrameCodec(identity, StaticKeys([addr.public_raw]), config=self.rpc_config)
        ctx = zmq.asyncio.Context()
        curve = CurveClient(TransportKeys.derived_from(identity), addr.transport_public)
        # watched: a call to a peer that went away, or whose keys changed under us,
        # fails within CONNECT_TIMEOUT_S instead of at its deadline
        rpc = RpcClient(codec=codec, endpoint=addr.endpoint, ctx=ctx, curve=curve, watch=True,
                        connect_timeout_s=CONNECT_TIMEOUT_S)
        rpc.connect()
        self._conn, self._conn_address = (loop, ctx, rpc), addr
        return rpc

    def _peer_file_now(self) -> int | None:
        """peer.json's modification time (ns), None while there is none."""
        try:
            return self.data.peer_file.stat().st_mtime_ns
        except OSError:
            return None

    async def _peer_moved(self, wait_s: float = 5.0) -> bool:
        """Whether the local peer's file changes within ``wait_s`` (a restart, or the end
        of a key rotation); the next connection then follows it."""
        if self._embedded is not None:
            return False
        deadline = time.monotonic() + wait_s
        while True:
            stamp = self._peer_file_now()
            if stamp is not None and stamp != self._peer_file_stamp:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self._conn is not None:
            _, ctx, rpc = self._conn
            self._conn = None
            await rpc.close()
            ctx.term()

    def close(self) -> None:
        if self._conn is not None:
            loop = self._conn[0]
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(self.aclose())
            self._conn = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    # -- calls ---------------------------------------------------------------------------

    def astream(
        self,
        prompt: str,
        *,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        timeout_s: float | None = None,
        peer: str | None = None,
        model: str | None = None,
        session: str | None = None,
        local_only: bool | None = None,
        no_escalate: bool | None = None,
        threshold: float | None = None,
        on_step: Callable[[dict], None] | None = None,
        stop: str | Sequence[str] | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        json_schema: dict | None = None,
        response_format: dict | None = None,
    ) -> AnswerStream:
        """Stream an answer. Routing: ``peer`` / ``model`` pin a choice, ``session`` keeps
        a conversation on one peer, ``local_only`` never leaves the mesh, ``no_escalate``
        takes the first answer, ``threshold`` is the confidence that stops escalation.
        Options (only peers whose engine honours them answer): ``stop`` (a string or up to
        4) ends the answer before it; ``logprobs`` / ``top_logprobs`` (0..20) fill
        ``answer.logprobs``; ``json_schema`` (a JSON Schema as a dict) or OpenAI's
        ``response_format`` constrain the answer to JSON. Bad input: ``InvalidRequest``."""
        fmt = OutputFormat.for_schema(json_schema) if json_schema is not None else OutputFormat.from_openai(
            response_format)
        if fmt is not None:
            grammar_text(fmt)  # a schema that cannot be compiled is refused here, before anything is sent
        request = GenerationRequest.from_prompt(
            prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=check_stop(stop), logprobs=logprobs, top_logprobs=top_logprobs, format=fmt,
        ).validate()
        route = route_args(peer=peer, model=model, session=session, local_only=local_only,
                           no_escalate=no_escalate, threshold=threshold)
        return AnswerStream(self, request, timeout_s or self.timeout_s, route, on_step)

    async def aask(self, prompt: str, *, on_text: Callable[[str], None] | None = None, **kw) -> Answer:
        """The whole answer. Takes ``astream``'s keywords (routing pins and policy included)."""
        stream = self.astream(prompt, **kw)
        try:
            async for text in stream:
                if on_text is not None:
                    on_text(text)
        finally:
            await stream.aclose()
        assert stream.answer is not None
        return stream.answer

    def ask(self, prompt: str, *, on_text: Callable[[str], None] | None = None, **kw) -> Answer:
        """Blocking ask. ``on_text`` receives each piece of text as it arrives."""
        _no_running_loop("ask", "aask")

        async def once() -> Answer:
            try:
                return await self.aask(prompt, on_text=on_text, **kw)
            finally:
                await self.aclose()

        return asyncio.run(once())

    # -- durable jobs (mesh.jobs) -------------------------------------------------------

    async def asubmit(
        self,
        prompt: str,
        *,
        key: str | None = None,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        model: str | None = None,
        local_only: bool | None = None,
        timeout_s: float = 30.0,
    ) -> dict:
        """Queue ``prompt`` as a durable job at the peer; returns the job (a dict with
        ``id`` and ``state``) once it is on disk there. ``key`` is the idempotency key:
        submitting again with the same key (say, after a timeout) returns the same job;
        one is made up when omitted. Bad input is refused here (``InvalidRequest``)."""
        request = GenerationRequest.from_prompt(
            prompt, system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
        ).validate()
        ask = ask_args(request)
        ask["route"] = route_args(model=model, local_only=local_only or None)
        args = {"ask": ask, "key": key or uuid.uuid4().hex}
        return (await self.acall("job.submit", args, timeout_s=timeout_s))["job"]

    def submit(self, prompt: str, **kw) -> dict:
        """Blocking ``asubmit``."""
        _no_running_loop("submit", "asubmit")
        return self._once(self.asubmit(prompt, **kw))

    async def ajob(self, job_id: str, *, timeout_s: float = 10.0) -> dict:
        """One job (state, attempts, where it ran, ``result_text`` once done)."""
        return (await self.acall("job.get", {"id": job_id}, timeout_s=timeout_s))["job"]

    def job(self, job_id: str, *, timeout_s: float = 10.0) -> dict:
        _no_running_loop("job", "ajob")
        return self._once(self.ajob(job_id, timeout_s=timeout_s))

    async def aresult(self, job_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.5) -> dict:
        """Wait until the job has finished (done, failed or cancelled) and return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.ajob(job_id)
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"job {job_id} still {job['state']} after {timeout_s:g}s")
            await asyncio.sleep(poll_s)

    def result(self, job_id: str, *, timeout_s: float = 300.0) -> dict:
        _no_running_loop("result", "aresult")
        return self._once(self.aresult(job_id, timeout_s=timeout_s))

    async def acancel(self, job_id: str, *, timeout_s: float = 10.0) -> dict:
        """Cancel a job that has not finished (queued, or running here or elsewhere):
        ``{"cancelled": bool, "job": ...}``; ``cancelled`` is False if it had already
        finished, and its state then says how. Its result is never stored afterwards."""
        return await self.acall("job.cancel", {"id": job_id}, timeout_s=timeout_s)

    def cancel(self, job_id: str, *, timeout_s: float = 10.0) -> dict:
        """Blocking ``acancel``."""
        _no_running_loop("cancel", "acancel")
        return self._once(self.acancel(job_id, timeout_s=timeout_s))

    def _once(self, coro):
        async def once():
            try:
                return await coro
            finally:
                await self.aclose()

        return asyncio.run(once())

    async def ainfo(self, *, timeout_s: float = 10.0) -> dict:
        return await self.acall("info", {}, timeout_s=timeout_s)

    def info(self, *, timeout_s: float = 10.0) -> dict:
        _no_running_loop("info", "ainfo")
        return self._once(self.ainfo(timeout_s=timeout_s))

    # -- models (mesh.models) ------------------------------------------------------------

    async def amodels(self, *, timeout_s: float = 30.0) -> dict:
        """Every model in the mesh: ``{"models": [{sha256, name, family, parameters,
        quantisation, context_length, size, holders, loaded_on}], "peers_asked",
        "unreachable"}``, asking every live member."""
        return await self.acall("models.mesh", {}, timeout_s=timeout_s)

    def models(self, *, timeout_s: float = 30.0) -> dict:
        _no_running_loop("models", "amodels")
        return self._once(self.amodels(timeout_s=timeout_s))

    async def apull(self, model: str, *, rate_mb_s: float | None = None, pin: bool = False,
                    on_progress: Callable[[dict], None] | None = None, timeout_s: float = 24 * 3600.0) -> dict:
        """Fetch ``model`` (a name, a SHA-256 or a 12+ digit prefix) from the peers that hold
        it into this peer's store; ``on_progress`` gets each progress report (``pieces``,
        ``pieces_done``, ``bytes_done``, ``size``, ``by_source``). Returns the pull's result
        (``already: True`` when the store had it). Errors: ``ModelNotFound``,
        ``ModelStoreFull``, ``ManifestError``, ``ModelError`` (no source left; pull again to
        resume)."""
        args: dict[str, Any] = {"model": model, "pin": pin}
        if rate_mb_s is not None:
            args["rate"] = rate_mb_s * 1e6
        conn = await self._connection()
        async with conn.stream("models.pull", args, timeout_s=timeout_s) as call:
            async for chunk in call:
                if on_progress is not None and isinstance(chunk, dict) and isinstance(chunk.get("p"), dict):
                    on_progress(chunk["p"])
            return call.result or {}

    def pull(self, model: str, **kw) -> dict:
        _no_running_loop("pull", "apull")
        return self._once(self.apull(model, **kw))

    # -- embeddings ----------------------------------------------------------------------

    async def aembed_result(self, texts: Sequence[str] | str, *, model: str | None = None, peer: str | None = None,
                            timeout_s: float = 120.0) -> Embeddings:
        """``aembed`` with who made the vectors: ``Embeddings`` (``vectors`` as float32
        bytes, ``floats()``, ``model``, ``peer``, ``prompt_tokens``, ``dimensions``)."""
        request = EmbeddingRequest((texts,) if isinstance(texts, str) else tuple(texts)).validate()
        args: dict[str, Any] = request.to_wire()
        route = route_args(model=model, peer=peer)
        if route:
            args["route"] = route
        vectors: list[bytes] = []
        conn = await self._connection()
        async with conn.stream("embed", args, timeout_s=timeout_s) as call:
            async for chunk in call:
                if isinstance(chunk, dict) and isinstance(chunk.get("v"), list):
                    vectors += chunk["v"]
            final = call.result or {}
        try:
            checked = check_vectors(vectors, count=len(request.texts))
        except ValueError as e:
            raise MeshError(f"the peer sent bad vectors: {e}") from None
        return Embeddings(checked, model=str(final.get("model", "")), prompt_tokens=int(final.get("prompt_tokens", 0)),
                          peer=str(final.get("peer", "")))

    async def aembed(self, texts: Sequence[str] | str, *, model: str | None = None, peer: str | None = None,
                     timeout_s: float = 120.0) -> list[list[float]]:
        """One unit-length vector per text, in order, made by a model in the mesh that can
        embed (``model`` pins one; vectors of different models are not comparable)."""
        out = await self.aembed_result(texts, model=model, peer=peer, timeout_s=timeout_s)
        return out.floats()

    def embed(self, texts: Sequence[str] | str, **kw) -> list[list[float]]:
        """Blocking ``aembed``."""
        _no_running_loop("embed", "aembed")
        return self._once(self.aembed(texts, **kw))

    def embed_result(self, texts: Sequence[str] | str, **kw) -> Embeddings:
        """Blocking ``aembed_result``."""
        _no_running_loop("embed_result", "aembed_result")
        return self._once(self.aembed_result(texts, **kw))

    # -- any method ----------------------------------------------------------------------

    async def acall(self, method: str, args: dict[str, Any] | None = None, *, timeout_s: float = 10.0) -> dict:
        """One unary call of the peer's RPC method ``method`` (see docs/protocol.md), on
        this client's connection; returns its result. Errors are ``mesh.errors`` classes
        (``error_from_wire``): ``JobNotFound``, ``InvalidRequest``, ``PeerUnavailable``...

            async with Client() as client:
                members = await client.acall("members", timeout_s=5)
        """
        return await (await self._connection()).call(method, args or {}, timeout_s=timeout_s)

    def call(self, method: str, args: dict[str, Any] | None = None, *, timeout_s: float = 10.0) -> dict:
        """Blocking ``acall``; the connection is closed after it."""
        _no_running_loop("call", "acall")
        return self._once(self.acall(method, args, timeout_s=timeout_s))


def _no_running_loop(name: str, async_name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise MeshError(f"Client.{name}() blocks; inside an event loop use `await client.{async_name}(...)`")


class _EmbeddedPeer:
    """A peer on its own thread and event loop, for ``Client.embedded``."""

    def __init__(self, config: PeerConfig, backend_factory) -> None:
        self.config = config
        self.backend_factory = backend_factory
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._address: PeerAddress | None = None

    def start(self) -> PeerAddress:
        self._thread = threading.Thread(target=self._main, name="mesh-embedded-peer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self._address is not None
        return self._address

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from mesh.peer import Peer

        kw = {"backend_factory": self.backend_factory} if self.backend_factory else {}
        peer = Peer(self.config, **kw)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            endpoint = await peer.start()
        except BaseException as e:  # handed to the starting thread, which raises it
            self._error = e if isinstance(e, MeshError) else ConfigError(f"embedded peer failed to start: {e}")
            self._ready.set()
            return
        assert peer.identity is not None
        self._address = PeerAddress(
            endpoint, peer.identity.public_raw, peer.identity.peer_id_text, transport_public=peer.transport.public
        )
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await peer.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)
