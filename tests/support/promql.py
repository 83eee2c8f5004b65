"""The vector selectors a PromQL expression reads, for tests that check a dashboard's or
an alert rule's queries against what a real Prometheus scraped (tests/processes/
test_contrib_promql.py).

Prometheus 2.42 (Debian 12) has no parse endpoint, so this is a small lexer over the
expression: string literals, range and subquery brackets, and the label lists after
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` are skipped;
an identifier followed by ``(`` is a function or aggregation; any other identifier
that is not a keyword is a metric name, with the label matchers in the braces after it.
A selector written only in braces (``{__name__="x"}``) takes its name from
``__name__``. Enough for the queries people write in dashboards and rules, not a full
grammar (no error reporting: Prometheus's query API judges the syntax).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                      "unless", "offset", "atan2", "inf", "nan", "start", "end"})
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<comment>\#[^\n]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<num>[0-9.][0-9A-Za-z_.]*)
  | (?P<space>\s+)
  | (?P<punct>.)
""", re.X | re.S)
MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*,?""")
OPEN_CLOSE = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # "=", "!=", "=~" or "!~"
    value: str


@dataclass(frozen=True)
class Selector:
    name: str | None  # None: braces only, with no __name__ matcher
    matchers: tuple[Matcher, ...]


def _unquote(s: str) -> str:
    if s[0] == "`":
        return s[1:-1]
    if s[0] == "'":
        s = '"' + s[1:-1].replace('\\"', '"').replace('"', '\\"') + '"'
    return json.loads(s)


def _tokens(expr: str) -> list[tuple[str, str, int, int]]:
    out = []
    for m in TOKEN.finditer(expr):
        if m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group(), m.start(), m.end()))
    return out


def _close(tokens, i: int) -> int:
    """The index of the token closing the bracket at ``i``."""
    opener, depth = tokens[i][1], 0
    for j in range(i, len(tokens)):
        kind, text = tokens[j][0], tokens[j][1]
        if kind == "punct" and text == opener:
            depth += 1
        elif kind == "punct" and text == OPEN_CLOSE[opener]:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {opener!r}")


def _matchers(body: str) -> tuple[Matcher, ...]:
    out, pos = [], 0
    while body[pos:].strip():
        m = MATCHER.match(body, pos)
        if m is None:
            raise ValueError(f"cannot read label matchers {body!r}")
        out.append(Matcher(m.group(1), m.group(2), _unquote(m.group(3))))
        pos = m.end()
    return tuple(out)


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in ``expr``, in order of appearance."""
    toks, out, i = _tokens(expr), [], 0
    while i < len(toks):
        kind, text, start, end = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if kind == "punct" and text == "[":
            i = _close(toks, i) + 1  # a range or subquery: durations, no selectors
        elif kind == "ident" and text in LABEL_LISTS and nxt and nxt[1] == "(":
            i = _close(toks, i + 1) + 1
        elif kind == "ident" and nxt and (nxt[1] == "(" or nxt[1] in ("by", "without")):
            i += 1  # a function or an aggregation (sum by (x) (...))
        elif kind == "ident" and text not in KEYWORDS:
            matchers: tuple[Matcher, ...] = ()
            i += 1
            if nxt and nxt[1] == "{":
                j = _close(toks, i)
                matchers = _matchers(expr[nxt[3]:toks[j][2]])
                i = j + 1
            out.append(Selector(text, matchers))
        elif kind == "punct" and text == "{":
            j = _close(toks, i)
            matchers = _matchers(expr[end:toks[j][2]])
            name = next((m.value for m in matchers if m.label == "__name__" and m.op == "="), None)
            out.append(Selector(name, tuple(m for m in matchers if m.label != "__name__")))
            i = j + 1
        else:
            i += 1
    return out
