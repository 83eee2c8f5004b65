"""Constrained output: an answer that is JSON, or JSON matching a JSON Schema.

``OutputFormat`` is what a request asks (OpenAI's ``response_format`` ``json_object`` or
``json_schema``); the engine samples under a llama.cpp grammar built from it
(``grammar_text``), so the answer always parses (unless it runs out of ``max_tokens``:
then ``finish_reason`` is ``"length"``). ``json_object`` uses llama.cpp's generic JSON
grammar (an object at the top); ``json_schema`` is compiled by llama.cpp's own
converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``).

Checks, in the order they run (``check`` is cheap and pure, run at every hop;
``grammar_text`` imports llama.cpp and runs where the request enters and in the engine):

- the schema's JSON is at most ``MAX_SCHEMA_BYTES`` and nests at most ``MAX_DEPTH``
  levels; it is an object;
- ``$ref`` only to ``#/...`` within the schema. Attack: the converter fetches an
  ``https://`` reference with ``requests`` unless an ``assert`` stops it, and asserts
  vanish under ``python -O``;
- length and count keywords (``maxLength``, ``minItems``, ...) at most ``MAX_COUNT``,
  ``pattern`` at most ``MAX_PATTERN_CHARS`` with repetitions (``{n,m}``) multiplying to
  at most ``MAX_PATTERN_REPEAT``. Attack: the converter writes such repetitions out, so
  ``maxLength: 10**12`` would never finish and ``a{1000}{1000}`` would build megabytes;
- the grammar it compiles to is at most ``MAX_GRAMMAR_BYTES`` with groups nested at most
  ``MAX_GRAMMAR_NESTING`` deep (llama.cpp's grammar parser recurses per group), and
  llama.cpp's parser accepts it (a NULL sampler would crash the engine).

A failure is ``InvalidRequest`` naming the construct, e.g. ``response_format.json_schema.
schema: $ref 'https://x/y.json' leaves the schema (only '#/...' references)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 16  # JSON containers nested in the schema document
MAX_COUNT = 1024  # maxLength, minItems, ...: the converter writes each one out
MAX_PATTERN_CHARS = 512
MAX_PATTERN_REPEAT = 10_000
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GRAMMAR_NESTING = 2 * MAX_COUNT + 64
KINDS = ("json_object", "json_schema")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
           "maxContains")
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_FIELD = "response_format.json_schema.schema"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class OutputFormat:
    kind: str  # "json_object" or "json_schema"
    schema: str = ""  # json_schema: the schema as JSON text (property order kept: it orders the answer)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.kind, **({"schema": self.schema} if self.kind == "json_schema" else {})}

    @classmethod
    def from_wire(cls, d: Any) -> OutputFormat:
        if not isinstance(d, dict) or d.get("type") not in KINDS:
            raise InvalidRequest(f"format must be a map with type one of {', '.join(KINDS)}")
        if d["type"] == "json_object":
            return cls("json_object")
        schema = d.get("schema")
        if not isinstance(schema, str):
            raise InvalidRequest("format.schema must be the schema as JSON text")
        return cls("json_schema", schema).check()

    @classmethod
    def from_openai(cls, value: Any) -> OutputFormat | None:
        """OpenAI's ``response_format``: ``{"type": "text"}`` (None: no constraint),
        ``{"type": "json_object"}``, or ``{"type": "json_schema", "json_schema": {"name",
        "schema", "strict", "description"}}`` (``strict`` or not, the answer is held to the
        schema). Cheap checks only (``grammar_text`` compiles it)."""
        if value is None:
            return None
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return cls("json_object")
        if kind != "json_schema":
            raise InvalidRequest("response_format.type must be text, json_object or json_schema")
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest("response_format.json_schema must be an object with name and schema")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest("response_format.json_schema.name must be 1..64 of a-z, A-Z, 0-9, _ and -")
        if not isinstance(spec.get("strict", False), (bool, type(None))):
            raise InvalidRequest("response_format.json_schema.strict must be true or false")
        return cls.for_schema(spec.get("schema", {}))

    @classmethod
    def for_schema(cls, schema: Any) -> OutputFormat:
        """From a decoded schema (a dict), checked."""
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{_FIELD} must be a JSON object")
        try:
            text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (ValueError, RecursionError):
            raise InvalidRequest(f"{_FIELD} nests too deep or holds a non-finite number") from None
        return cls("json_schema", text).check()

    def check(self) -> OutputFormat:
        """The cheap, pure checks (see the module docstring); returns self."""
        if self.kind not in KINDS:
            raise InvalidRequest(f"response_format type must be one of {', '.join(KINDS)}")
        if self.kind == "json_object":
            return self
        size = len(self.schema.encode("utf-8"))
        if size > MAX_SCHEMA_BYTES:
            raise InvalidRequest(f"{_FIELD} is {size} bytes of JSON; the limit is {MAX_SCHEMA_BYTES}")
        try:
            doc = json.loads(self.schema)
        except RecursionError:
            raise InvalidRequest(f"{_FIELD} nests deeper than {MAX_DEPTH} levels") from None
        except ValueError as e:
            raise InvalidRequest(f"{_FIELD} is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidRequest(f"{_FIELD} must be a JSON object")
        _walk(doc, "", 1)
        return self


def _walk(node: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{_FIELD} nests deeper than {MAX_DEPTH} levels (at {path or '/'})")
    if isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                _walk(v, f"{path}/{i}", depth + 1)
        return
    ref = node.get("$ref")
    if ref is not None and not (isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))):
        raise InvalidRequest(f"{_FIELD}: $ref {str(ref)[:100]!r} at {path or '/'} leaves the schema "
                             "(only '#/...' references are followed)")
    for key in _COUNTS:
        v = node.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT):
            raise InvalidRequest(f"{_FIELD}: {key} at {path or '/'} must be an integer in 0..{MAX_COUNT}")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidRequest(f"{_FIELD}: pattern at {path or '/'} is over {MAX_PATTERN_CHARS} characters")
        repeat = 1
        for lo, hi in _REPEAT.findall(pattern):
            repeat *= max(int(lo), int(hi) if hi else int(lo)) + 1
            if repeat > MAX_PATTERN_REPEAT:
                raise InvalidRequest(f"{_FIELD}: pattern at {path or '/'} repeats too much "
                                     f"(its {{n,m}} counts multiply past {MAX_PATTERN_REPEAT})")
    for k, v in node.items():
        if isinstance(v, (dict, list)):
            _walk(v, f"{path}/{k}", depth + 1)


def grammar_text(fmt: OutputFormat) -> str:
    """The llama.cpp grammar (GBNF) for ``fmt``, checked; ``InvalidRequest`` if it cannot
    be built. Imports llama.cpp (its Python converter and grammar parser)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    fmt.check()
    if fmt.kind == "json_object":
        return JSON_GBNF
    try:
        text = json_schema_to_gbnf(fmt.schema)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
        # the converter's messages name the construct ("Unrecognized schema: {'type': 'foo'}")
        raise InvalidRequest(f"{_FIELD} cannot be compiled to a grammar: {str(e)[:300] or type(e).__name__}") from None
    check_grammar(text)
    return text


def check_grammar(text: str) -> None:
    """Bound a grammar's size and nesting, then have llama.cpp's parser accept it."""
    import llama_cpp

    size = len(text.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(f"{_FIELD} compiles to a grammar of {size} bytes; the limit is {MAX_GRAMMAR_BYTES} "
                             "(lower maxLength / minItems / enum sizes)")
    if nesting(text) > MAX_GRAMMAR_NESTING:
        raise InvalidRequest(f"{_FIELD} compiles to groups nested over {MAX_GRAMMAR_NESTING} deep")
    sampler = llama_cpp.llama_sampler_init_grammar(None, text.encode("utf-8"), b"root")
    if not sampler:
        raise InvalidRequest(f"{_FIELD} compiles to a grammar llama.cpp does not accept")
    llama_cpp.llama_sampler_free(sampler)


def nesting(gbnf: str) -> int:
    """How deep ``(`` groups nest in a GBNF text (quoted literals and ``[...]`` classes skipped)."""
    depth = deepest = 0
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c in "\"[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "#":
            while i < n and gbnf[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest
