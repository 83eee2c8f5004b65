"""``OpenAIBackend``: a Backend over any OpenAI-compatible chat completions endpoint.

The cloud step of the escalation ladder (OpenAI, Anthropic's compatible endpoint, a
hosted vLLM), and the way a peer serves through an engine it already runs (Ollama,
vLLM, llama-server, llama_cpp.server) instead of llama.cpp in-process.

Shape::

    stream()  validate, fit check, admit or BackendBusy        (local, like LlamaBackend)
      POST {base_url}/chat/completions  stream=true             httpx, one slot = one request
      bytes --SSEDecoder--> events --ChatStreamState--> TextChunk ... FinalStats
      finally: close the response (the server sees the disconnect and stops), free the slot

Contract kept (``tests/test_backend_conformance.py``, run against a real server by
``tests/test_openai_backend.py``):

- ``max_concurrency`` requests run at once, ``queue_limit`` more wait here in FIFO order,
  and beyond that ``stream()`` raises ``BackendBusy`` at its first ``__anext__`` without
  touching the network. A server's 429 is ``BackendBusy`` too.
- Closing the stream early, or cancelling its consumer, closes the HTTP response before
  the stream's ``finally`` returns; servers stop generating for a closed connection
  (llama_cpp.server checks after every token). A request cancelled while waiting here
  is never sent.
- Token counts come from the stream's ``usage`` (asked for with
  ``stream_options.include_usage``). Servers that do not send it (llama_cpp.server, some
  Ollama versions): completion tokens are counted from the per-token logprobs, else
  from the text chunks; prompt tokens are estimated as characters / ``chars_per_token``
  plus template overhead (``openai_wire.estimate_prompt_tokens``).
- Confidence is measured from ``logprobs`` (asked for with ``top_logprobs: 0``): the
  geometric mean and the minimum of the chosen tokens' probabilities, as for llama.cpp.
  A server that returns none (Anthropic's endpoint ignores the option) cannot be
  measured: ``FinalStats.confidence`` and ``min_token_prob`` are then the declared
  ``unmeasured_confidence`` (default 1.0: no evidence against the answer, the value
  ``ConfidenceMeter`` gives for no tokens), and ``capabilities.extra["logprobs"]`` turns
  False so the Router can tell. A server that refuses ``logprobs`` or ``stream_options``
  with a 400 naming them is asked again without them, and never again with them.
  Logprobs are not free on every server: llama_cpp.server with the default model gave
  about 21 tokens/s with them and 50-85 without (measured here); ``request_logprobs=False``
  turns them off for a peer that serves through such an engine.
- The prompt must fit ``context_length`` (declared: an endpoint does not say) with
  ``max_tokens``, by the estimate above; otherwise ``InvalidRequest`` here, so the
  Router can go elsewhere rather than learn it from a server (llama_cpp.server, for
  one, reports an overflowing streamed prompt only by closing the stream empty).

Errors, mapped here and nowhere else (``url`` is the endpoint without credentials or
query)::

    connect refused / connect timeout / no data for timeout_s   BackendUnavailable
    HTTP 401, 403                                               BackendAuthError
    HTTP 429                                                    BackendBusy
    HTTP 400, 413, 422 (the server's message quoted)            InvalidRequest
    HTTP 408, 502, 503, 504                                     BackendUnavailable
    other HTTP errors, a broken or malformed stream             GenerationError

``BackendUnavailable`` and ``BackendAuthError`` subclass ``GenerationError``: over the
wire they are "generation_failed", locally the Router can tell "try elsewhere or queue
the job" and "this peer's cloud key is wrong" from an engine failure.

The API key is sent only in the ``Authorization`` header. It is kept in a wrapper whose
repr is ``<secret>``, never put in a message, a log line, ``repr()`` or the
capabilities, and is scrubbed from every server message quoted in an exception (a
server may echo it back in part, e.g. OpenAI's "Incorrect API key provided: sk-ab***").
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from mesh.errors import (
    BackendBusy,
    Cancelled,
    ConfigError,
    GenerationError,
    InvalidRequest,
)
from mesh.inference import openai_wire as wire
from mesh.inference.backend import (
    READY,
    Capabilities,
    EngineStatus,
    FinalStats,
    GenerationRequest,
    Load,
    TextChunk,
)
from mesh.inference.slots import SlotQueue, check_fits
from mesh.inference.sse import SSEDecoder, SSEError

log = logging.getLogger(__name__)

ENV_URL = "MESH_CLOUD_URL"
ENV_MODEL = "MESH_CLOUD_MODEL"
ENV_API_KEY = "MESH_CLOUD_API_KEY"

DEFAULT_CONTEXT_LENGTH = 8192
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_QUEUE_LIMIT = 8
MAX_ERROR_BODY_BYTES = 64 * 1024  # of an HTTP error body read to quote its message
TPS_EWMA_ALPHA = 0.2  # weight of the newest answer in Capabilities.tokens_per_s
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a bearer token may hold


class BackendUnavailable(GenerationError):
    """The endpoint could not be reached or did not answer in time (names the URL)."""


class BackendAuthError(GenerationError):
    """The endpoint refused this peer's API key (HTTP 401 / 403). Never contains the key."""


class _Secret:
    """Holds the API key so that no repr, str, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _Slot:
    """One admitted request that is running (holds a slot)."""

    __slots__ = ("closed_by_backend", "response")

    def __init__(self) -> None:
        self.response: httpx.Response | None = None
        self.closed_by_backend = False


class OpenAIBackend:
    """The OpenAI-compatible ``Backend``. See the module docstring for the contract.

    ``base_url`` is the API root (``https://api.openai.com/v1``,
    ``http://127.0.0.1:11434/v1``); a URL already ending in ``/chat/completions`` is used
    as is. Credentials go in ``api_key``, never in the URL. ``client`` injects an
    ``httpx.AsyncClient`` (e.g. one with ``httpx.MockTransport`` in tests); the caller
    then owns it. Without one, the backend makes its own, bound to the event loop that
    first streams (a backend lives in one loop; one used from a new loop, as tests with
    several ``asyncio.run`` calls do, opens a fresh client there).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,  # longest silence while sending or reading (servers ping)
        connect_timeout_s: float = 5.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        context_length: int = DEFAULT_CONTEXT_LENGTH,  # tokens; as the provider documents it
        parameters: int = 0,  # parameter count, 0 when unknown
        quantisation: str = "",
        tier: int | None = None,  # a declared strength for the escalation ladder (higher is stronger)
        request_logprobs: bool = True,
        unmeasured_confidence: float = 1.0,
        chars_per_token: float = 4.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not model:
            raise ConfigError("no model name given for the OpenAI-compatible backend")
        if max_concurrency < 1 or queue_limit < 0:
            raise ConfigError("max_concurrency must be >= 1 and queue_limit >= 0")
        if context_length < 16:
            raise ConfigError(f"context_length must be at least 16 tokens, got {context_length}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigError("timeouts must be positive")
        if not (0.0 <= unmeasured_confidence <= 1.0):
            raise ConfigError(f"unmeasured_confidence must be in [0, 1], got {unmeasured_confidence}")
        if chars_per_token <= 0:
            raise ConfigError(f"chars_per_token must be positive, got {chars_per_token}")
        self._endpoint, self._url = _endpoint(base_url)
        self._model = model
        if api_key is not None and not _HEADER_SAFE.fullmatch(api_key):
            # Checked here, not left to the HTTP library: its error would quote the header.
            raise ConfigError("the API key is empty or has characters an HTTP header cannot carry (spaces, non-ASCII)")
        self._key = _Secret(api_key) if api_key else None
        if self._key is not None and self._endpoint.scheme == "http" and not _is_loopback(self._endpoint.host):
            log.warning("the API key for %s is sent over plain http", self._url)
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._parallel = max_concurrency
        self._queue_limit = queue_limit
        self._want_logprobs = request_logprobs
        self._want_usage = True
        self._unmeasured = unmeasured_confidence
        self._chars_per_token = chars_per_token
        self._injected = client
        self._owned: httpx.AsyncClient | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        extra: dict = {"engine": "openai-compatible", "endpoint": self._url, "logprobs": None}
        if tier is not None:
            extra["tier"] = tier
        self._caps = Capabilities(
            model=model,
            parameters=parameters,
            quantisation=quantisation,
            context_length=context_length,
            tokens_per_s=0.0,
            parallel=max_concurrency,
            queue_limit=queue_limit,
            extra=extra,
        )
        self._slots = SlotQueue(parallel=max_concurrency, queue_limit=queue_limit)
        self._active: set[_Slot] = set()
        self._started = 0
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs) -> OpenAIBackend:
        """Build from ``MESH_CLOUD_URL``, ``MESH_CLOUD_MODEL`` and (optional)
        ``MESH_CLOUD_API_KEY``; ``kwargs`` go to the constructor. ``ConfigError`` when the
        URL or model is missing: check ``MESH_CLOUD_URL in os.environ`` first if the cloud
        is optional."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").strip()
        model = env.get(ENV_MODEL, "").strip()
        if not url:
            raise ConfigError(
                f"{ENV_URL} is not set; set it to an OpenAI-compatible API root, e.g. https://api.openai.com/v1"
            )
        if not model:
            raise ConfigError(f"{ENV_MODEL} is not set; set it to the model to ask at {ENV_URL}")
        return cls(url, model, api_key=env.get(ENV_API_KEY, "").strip() or None, **kwargs)

    def __repr__(self) -> str:
        key = "<secret>" if self._key is not None else None
        return f"OpenAIBackend(url={self._url!r}, model={self._model!r}, api_key={key})"

    # -- Backend protocol

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TextChunk | FinalStats]:
        request.validate()
        if request.needs:  # routing never sends them here (no features declared); refuse rather than ignore
            raise InvalidRequest(f"this backend does not honour {', '.join(sorted(request.needs))}")
        prompt_estimate = wire.estimate_prompt_tokens(request.messages, chars_per_token=self._chars_per_token)
        self._check_fits(prompt_estimate, request.max_tokens)
        admitted_at = self._clock()
        slot = await self._acquire()
        reader = None
        try:
            self._started += 1
            response = await self._open(request, slot)
            reader = response.aiter_bytes()
            decoder, state = SSEDecoder(), wire.ChatStreamState()
            first_at = last_at = None
            eof = False
            while not state.done and not eof:
                self._check_open(slot)
                raw = await self._read(reader, slot)
                eof = raw is None
                try:
                    events = decoder.close() if eof else decoder.feed(raw)
                except SSEError as e:
                    raise GenerationError(f"{self._url} sent a broken event stream: {e}") from None
                for event in events:
                    text = self._take(state, event.data)
                    if text:
                        last_at = self._clock()
                        first_at = last_at if first_at is None else first_at
                        self._check_open(slot)
                        yield TextChunk(text)
            if not state.complete:
                raise GenerationError(f"{self._url} ended the stream before the answer was complete")
            yield self._final(request, state, prompt_estimate, admitted_at, first_at, last_at)
        finally:
            try:
                if reader is not None:
                    await reader.aclose()
                if slot.response is not None:
                    await slot.response.aclose()  # the server sees the disconnect and stops
            finally:
                self._release(slot)

    async def aclose(self) -> None:
        """Refuse new work, fail waiting requests and stop running ones with ``Cancelled``,
        close the client the backend owns. Idempotent."""
        self._closed = True
        self._slots.close()
        for slot in list(self._active):
            slot.closed_by_backend = True
            if slot.response is not None:
                await slot.response.aclose()  # a read in progress fails at once; _read maps it
        owned, self._owned = self._owned, None
        if owned is not None and self._owned_loop is asyncio.get_running_loop():
            await owned.aclose()

    # -- load, for schedulers and tests

    def status(self) -> EngineStatus:
        return READY

    def load(self) -> Load:
        return Load(running=self.running, waiting=self.waiting)

    @property
    def running(self) -> int:
        return self._slots.running

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    @property
    def started_count(self) -> int:
        """Requests sent to the server since construction."""
        return self._started

    # -- admission (same discipline as ScriptedBackend: FIFO hand-over of slots)

    def _check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        check_fits(prompt_tokens, max_tokens, self._caps.context_length, about="about ",
                   where=f"the context declared for {self._model} at {self._url}")

    async def _acquire(self) -> _Slot:
        await self._slots.acquire(what=lambda: f"requests to {self._url} ")
        slot = _Slot()
        self._active.add(slot)
        return slot

    def _release(self, slot: _Slot) -> None:
        self._active.discard(slot)
        self._slots.release()

    # -- HTTP

    def _http(self) -> httpx.AsyncClient:
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            # A client's pooled connections belong to the loop that opened them.
            self._owned = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=self._parallel, max_keepalive_connections=self._parallel),
            )
            self._owned_loop = loop
        return self._owned

    async def _open(self, request: GenerationRequest, slot: _Slot) -> httpx.Response:
        """POST the request; return a 200 event-stream response, or raise the mapped error.
        A 400 naming an optional field we sent is retried once without it."""
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        while True:
            self._check_open(slot)
            sent_logprobs, sent_usage = self._want_logprobs, self._want_usage
            body = wire.request_body(request, model=self._model, logprobs=sent_logprobs, include_usage=sent_usage)
            client = self._http()
            try:
                built = client.build_request("POST", self._endpoint, json=body, headers=headers, timeout=self._timeout)
                slot.response = await client.send(built, stream=True)
            except httpx.HTTPError as e:
                raise self._transport_error(e, slot, reading=False) from None
            self._check_open(slot)
            response = slot.response
            if response.status_code == 200:
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    info = await self._error_body(response, slot)
                    raise GenerationError(
                        f"{self._url} answered with {ctype or 'no content type'}, not an event stream: {self._scrub(info.message)}"
                    )
                return response
            info = await self._error_body(response, slot)
            if response.status_code == 400 and self._drop_refused_option(info, sent_logprobs, sent_usage):
                await response.aclose()
                slot.response = None
                continue
            raise self._status_error(response, info)

    def _drop_refused_option(self, info: wire.ErrorInfo, sent_logprobs: bool, sent_usage: bool) -> bool:
        said = f"{info.message} {info.code}".lower()
        if sent_logprobs and "logprob" in said:
            log.info("%s does not take logprobs; asking without them (confidence unmeasured)", self._url)
            self._want_logprobs = False
            self._set_logprobs_seen(False)
            return True
        if sent_usage and ("stream_options" in said or "include_usage" in said):
            log.info("%s does not take stream_options; counting tokens here", self._url)
            self._want_usage = False
            return True
        return False

    async def _error_body(self, response: httpx.Response, slot: _Slot) -> wire.ErrorInfo:
        """The server's error message, reading at most MAX_ERROR_BODY_BYTES of the body."""
        body = bytearray()
        reader = response.aiter_bytes()
        try:
            while len(body) < MAX_ERROR_BODY_BYTES:
                raw = await self._read(reader, slot)
                if raw is None:
                    break
                body += raw
        except GenerationError:
            pass  # the status code says enough; a body cut short is not worth a second error
        finally:
            await reader.aclose()
        return wire.error_info(bytes(body[:MAX_ERROR_BODY_BYTES]))

    async def _read(self, reader: AsyncIterator[bytes], slot: _Slot) -> bytes | None:
        """The next bytes of the response body, or None at its end."""
        try:
            return await reader.__anext__()
        except StopAsyncIteration:
            return None
        except (httpx.HTTPError, httpx.StreamError) as e:
            raise self._transport_error(e, slot, reading=True) from None

    def _check_open(self, slot: _Slot) -> None:
        if slot.closed_by_backend or self._closed:
            raise Cancelled("the backend closed while this answer was being generated")

    # -- mapping foreign errors (the one place)

    def _transport_error(self, e: httpx.HTTPError | httpx.StreamError, slot: _Slot, *, reading: bool) -> Exception:
        if slot.closed_by_backend or self._closed:
            return Cancelled("the backend closed while this answer was being generated")
        if isinstance(e, httpx.ConnectTimeout):
            return BackendUnavailable(f"cannot reach {self._url}: no connection within {self._timeout.connect:g} s")
        if isinstance(e, httpx.ConnectError):
            return BackendUnavailable(f"cannot reach {self._url}: {self._scrub(str(e)) or 'connection refused'}")
        if isinstance(e, httpx.TimeoutException):
            return BackendUnavailable(f"{self._url} sent nothing for {self._timeout.read:g} s; giving up on it")
        what = "broke mid-answer" if reading else "failed"
        return GenerationError(
            f"the connection to {self._url} {what}: {type(e).__name__} {self._scrub(str(e))}".rstrip()
        )

    def _status_error(self, response: httpx.Response, info: wire.ErrorInfo) -> Exception:
        status = response.status_code
        said = self._scrub(info.message)
        if status in (401, 403):
            if self._key is None:
                return BackendAuthError(f"{self._url} wants an API key (HTTP {status}); set {ENV_API_KEY}: {said}")
            return BackendAuthError(f"{self._url} refused the API key (HTTP {status}); check {ENV_API_KEY}: {said}")
        if status == 429:
            retry = response.headers.get("retry-after", "").strip()
            after = f", retry after {retry[:16]} s" if retry else ""
            return BackendBusy(f"{self._url} is rate limiting (HTTP 429{after}): {said}")
        if status in (400, 413, 422):
            return InvalidRequest(f"{self._url} refused the request (HTTP {status}): {said}")
        if status == 404:
            return GenerationError(f"{self._url} answered 404 (check the base URL and model {self._model!r}): {said}")
        if status in (408, 502, 503, 504):
            return BackendUnavailable(f"{self._url} is unavailable (HTTP {status}): {said}")
        return GenerationError(f"{self._url} failed (HTTP {status}): {said}")

    def _take(self, state: wire.ChatStreamState, data: str) -> str:
        try:
            return state.take(data)
        except wire.MalformedChunk as e:
            raise GenerationError(f"{self._url} sent a malformed answer: {self._scrub(str(e))}") from None
        except wire.ReportedError as e:
            said = self._scrub(e.info.message)
            if e.info.is_context_overflow:
                raise InvalidRequest(f"{self._url} refused the request: {said}") from None
            raise GenerationError(f"{self._url} failed mid-answer: {said}") from None

    def _scrub(self, text: str) -> str:
        return redact(text, self._key.reveal() if self._key is not None else None)

    # -- stats

    def _final(
        self,
        request: GenerationRequest,
        state: wire.ChatStreamState,
        prompt_estimate: int,
        admitted_at: float,
        first_at: float | None,
        last_at: float | None,
    ) -> FinalStats:
        end = self._clock()
        last = last_at if last_at is not None else end
        first = first_at if first_at is not None else last
        completion = state.completion_tokens(request.max_tokens)
        prompt = (
            state.usage.prompt_tokens if state.usage is not None and state.usage.prompt_tokens > 0 else prompt_estimate
        )
        decode_s = last - first
        tps = (completion - 1) / decode_s if completion > 1 and decode_s > 0 else 0.0
        if self._want_logprobs:
            self._set_logprobs_seen(state.meter.count > 0)
        if tps > 0:
            self._caps = dataclasses.replace(self._caps, tokens_per_s=_ewma(self._caps.tokens_per_s, tps))
        measured = state.meter.count > 0
        return FinalStats(
            model=self._caps.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            confidence=state.meter.confidence if measured else self._unmeasured,
            min_token_prob=state.meter.min_token_prob if measured else self._unmeasured,
            finish_reason=state.mesh_finish_reason(),
            time_to_first_token_s=max(0.0, first - admitted_at),
            generation_s=max(0.0, last - admitted_at),
            tokens_per_s=tps,
        )

    def _set_logprobs_seen(self, seen: bool) -> None:
        if self._caps.extra.get("logprobs") is not seen:
            self._caps = dataclasses.replace(self._caps, extra={**self._caps.extra, "logprobs": seen})


# ---------------------------------------------------------------- pure helpers


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` and any word that shows a piece of it (a masked echo such
    as ``sk-ab***yz``: a word sharing its first or last 4 characters) replaced."""
    if not secret or len(secret) < 8:
        return text.replace(secret, "<secret>") if secret else text
    text = text.replace(secret, "<secret>")
    head, tail = secret[:4], secret[-4:]

    def scrub(m: re.Match) -> str:
        word = m.group()
        return "<secret>" if head in word or tail in word else word

    return re.sub(r"[^\s\"'`,:;()\[\]{}<>]+", scrub, text)


def _endpoint(base_url: str) -> tuple[httpx.URL, str]:
    """(the chat completions URL, the same without query for messages)."""
    try:
        url = httpx.URL(base_url.strip())
    except (httpx.InvalidURL, TypeError) as e:
        raise ConfigError(f"not a URL: {base_url!r} ({e})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"the OpenAI-compatible URL must be http(s)://HOST[:PORT]/PATH, got {base_url!r}")
    if url.userinfo:
        raise ConfigError("put credentials in the API key (MESH_CLOUD_API_KEY), not in the URL")
    path = url.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    url = url.copy_with(path=path, fragment=None)
    return url, str(url.copy_with(query=None))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ewma(previous: float, sample: float, alpha: float = TPS_EWMA_ALPHA) -> float:
    return sample if previous <= 0 else alpha * sample + (1 - alpha) * previous
