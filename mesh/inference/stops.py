"""Stop sequences: the answer ends before the first occurrence of any of them.

Pure: text in, text out. ``StopScanner`` sits between the token decoder and whoever
receives the answer's text (the engine's ``on_text``). It releases text only once it
cannot be the start of a stop sequence, so a stream never shows part of one: with
``stop=["\\nUser:"]`` a token ``"\\nUs"`` is held until the next token shows whether
``"er:"`` follows. At a match it releases the text before the stop sequence and says
so; the stop sequence itself is never released (OpenAI's ``stop``: "the returned text
will not contain the stop sequence")::

    s = StopScanner(["END"])
    s.feed("one E")   # -> ("one ", False): "E" could start "END"
    s.feed("ND two")  # -> ("", True): stopped; "one " is the whole answer
    s.flush()         # -> "" (after a stop nothing is held)

``released`` counts the characters released so far (the logprobs of a token go out
with the first release of its text; see ``mesh.inference.logprobs``).

Bounds (``check_stop``): at most ``MAX_STOPS`` sequences of 1..``MAX_STOP_CHARS``
characters each, so the held text is at most ``MAX_STOP_CHARS - 1`` characters and a
scan costs ``O(MAX_STOPS * MAX_STOP_CHARS)`` per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mesh.errors import InvalidRequest

MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256


def check_stop(value: Any, *, field: str = "stop") -> tuple[str, ...]:
    """A request's ``stop``: None, a string or a list of strings -> a tuple (possibly
    empty); ``InvalidRequest`` naming ``field`` for anything else."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest(f"{field} must be a string or a list of strings")
    if len(items) > MAX_STOPS:
        raise InvalidRequest(f"{field} has {len(items)} sequences; at most {MAX_STOPS}")
    for s in items:
        if not s:
            raise InvalidRequest(f"{field} sequences must not be empty")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"{field} sequences are at most {MAX_STOP_CHARS} characters, got {len(s)}")
    return tuple(dict.fromkeys(items))  # repeated ones once, first order kept


class StopScanner:
    """Hold back text that may begin a stop sequence; find the first one (see module)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.released = 0  # characters released so far

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to release now, and whether a stop sequence was found (then the
        scanner takes no more text: ``feed`` returns ``("", True)``)."""
        if self.stopped:
            return "", True
        buf = self._held + text
        # the held text never contains a whole stop sequence: the first match is in buf
        at = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if at >= 0:
            self._held, self.stopped = "", True
            return self._release(buf[:at]), True
        keep = max((_overlap(buf, s) for s in self._stops), default=0)
        self._held = buf[len(buf) - keep:] if keep else ""
        return self._release(buf[: len(buf) - keep]), False

    def flush(self) -> str:
        """At the end of generation (no stop found): the held text, released."""
        held, self._held = self._held, ""
        return self._release(held)

    def _release(self, text: str) -> str:
        self.released += len(text)
        return text


def _overlap(buf: str, stop: str) -> int:
    """The length of the longest end of ``buf`` that is a proper start of ``stop``."""
    for n in range(min(len(buf), len(stop) - 1), 0, -1):
        if stop.startswith(buf[-n:]):
            return n
    return 0
