"""An incremental decoder for server-sent events (``text/event-stream``), pure and bounded.

Source: the WHATWG HTML Living Standard, section 9.2 "Server-sent events", "Parsing an
event stream" and "Interpreting an event stream". What it keeps from there:

- Bytes are UTF-8; invalid sequences become U+FFFD (the standard's "UTF-8 decode"), and a
  leading byte-order mark is dropped. A multi-byte character split across two network
  reads is reassembled (an incremental decoder), as is a ``\\r\\n`` split between reads.
- Lines end in ``\\r\\n``, ``\\n`` or ``\\r``. A line starting with ``:`` is a comment (what
  servers send as keep-alives, e.g. sse-starlette's ``: ping``). ``field: value`` strips
  one space after the colon; a line with no colon is a field with an empty value.
- ``data`` lines accumulate (joined by ``\\n``); ``event`` and ``id`` set the event's type
  and id; ``retry`` and unknown fields are ignored. A blank line dispatches the event;
  an event with no ``data`` line is not dispatched.
- At end of stream a pending event whose last line was complete is dispatched (the
  standard discards it; real servers sometimes omit the final blank line after
  ``data: [DONE]``). An unterminated last line is a truncated read and is dropped.

A peer reads this from a server it does not control, so memory is bounded: a line longer
than ``max_line_chars`` or an event larger than ``max_event_chars`` raises ``SSEError``
instead of growing a buffer without end.

Example::

    decoder = SSEDecoder()
    for raw in network_reads:
        for event in decoder.feed(raw):
            handle(event.data)
    for event in decoder.close():
        handle(event.data)
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

DEFAULT_MAX_LINE_CHARS = 1 << 20  # 1 Mi characters: far above any real chunk line
DEFAULT_MAX_EVENT_CHARS = 4 << 20

_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEError(ValueError):
    """The byte stream is not a usable event stream (an oversize line or event)."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed it network reads in any sizes; it returns the events completed by each read."""

    def __init__(
        self, *, max_line_chars: int = DEFAULT_MAX_LINE_CHARS, max_event_chars: int = DEFAULT_MAX_EVENT_CHARS
    ) -> None:
        self._max_line = max_line_chars
        self._max_event = max_event_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # the unfinished last line, as read
        self._partial_chars = 0
        self._skip_lf = False
        self._at_start = True
        self._closed = False
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._id: str | None = None  # the standard's "last event ID": kept across events

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._closed:
            raise SSEError("feed() after close()")
        return self._take(self._utf8.decode(chunk))

    def close(self) -> list[SSEEvent]:
        """End of stream: return what the last complete lines still hold."""
        if self._closed:
            return []
        events = self._take(self._utf8.decode(b"", final=True))
        self._closed = True
        # An unterminated last line is a cut-off read: drop it.
        self._partial, self._partial_chars = [], 0
        if self._data:  # data lines are only ever taken from complete lines
            events.append(self._dispatch())
        return events

    # -- internals

    def _take(self, text: str) -> list[SSEEvent]:
        # Only the new text is scanned for line ends, and an unfinished line is kept as
        # pieces: a server dribbling one long line costs linear time, not quadratic.
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")  # the second half of a "\r\n" split between reads
        events: list[SSEEvent] = []
        pos = 0
        for m in _LINE_END.finditer(text):
            line = "".join(self._partial) + text[pos : m.start()]
            self._partial, self._partial_chars = [], 0
            event = self._line(line)
            if event is not None:
                events.append(event)
            pos = m.end()
            self._skip_lf = m.group() == "\r" and pos == len(text)
        rest = text[pos:]
        if rest:
            self._partial.append(rest)
            self._partial_chars += len(rest)
            if self._partial_chars > self._max_line:
                raise SSEError(f"an event-stream line is longer than {self._max_line} characters")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if len(line) > self._max_line:
            raise SSEError(f"an event-stream line is longer than {self._max_line} characters")
        if not line:
            if not self._data:
                self._event = ""
                return None
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_chars += len(value) + 1
            if self._data_chars > self._max_event:
                raise SSEError(f"an event is larger than {self._max_event} characters")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message", id=self._id)
        self._data, self._data_chars, self._event = [], 0, ""
        return event
