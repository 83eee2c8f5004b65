"""Merge a backend's text chunks that arrive close together into fewer, larger ones.

Every chunk sent to a caller is a signed envelope: a signature on one side, a
verification on the other, and a wake-up of both processes. At tens of tokens a second
on a machine whose cores are all busy generating, those wake-ups cost tokens/s. A
person cannot see a 30 ms difference in a stream, so text is held for at most
``window_s`` after the last send and then sent together:

- the first chunk, and any chunk arriving after a quiet gap of ``window_s``, goes at once
  (time to first token is unchanged; a slow model streams token by token);
- chunks arriving within the window of the last send are merged, and leave no later
  than ``window_s`` after that send, even if no further chunk comes;
- everything held is flushed before the ``FinalStats``;
- a chunk's ``logprobs`` entries are merged with its text, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mesh.inference.backend import FinalStats, TextChunk


async def coalesce(
    stream: AsyncIterator[TextChunk | FinalStats], *, window_s: float
) -> AsyncIterator[TextChunk | FinalStats]:
    if window_s <= 0:
        async for item in stream:
            yield item
        return
    loop = asyncio.get_running_loop()
    it = stream.__aiter__()
    held: list[str] = []
    held_lp: list = []
    last_sent = float("-inf")
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            timeout = max(0.0, last_sent + window_s - loop.time()) if held or held_lp else None
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:  # the window closed with text held: send it
                yield _merged(held, held_lp)
                last_sent = loop.time()
                continue
            fut, pending = pending, None
            try:
                item = fut.result()
            except StopAsyncIteration:
                break
            if isinstance(item, TextChunk):
                if not item.text and not item.logprobs:
                    continue
                held.append(item.text)
                held_lp.extend(item.logprobs)
                now = loop.time()
                if now - last_sent >= window_s:
                    yield _merged(held, held_lp)
                    last_sent = now
            else:
                if held or held_lp:
                    yield _merged(held, held_lp)
                yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait({pending})
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _merged(held: list[str], held_lp: list) -> TextChunk:
    """One chunk of what is held (both lists are emptied)."""
    out = TextChunk("".join(held), tuple(held_lp))
    held.clear()
    held_lp.clear()
    return out
