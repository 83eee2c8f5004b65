"""Function calling: OpenAI's ``tools`` / ``tool_choice``, tool calls in an answer, and
``tool`` messages in the next request.

A model is told about the functions in a plain-text system section (``prompt_messages``;
no chat template the mesh ships speaks tools, SmolLM2's among them), and samples under a
grammar (``grammar_text``) that makes a call exactly::

    {"name": "<function>", "arguments": <JSON that follows the function's parameters>}

``tool_choice`` "required" allows only such a call (of any listed function), a named
function only a call of it, "auto" a call or plain text that does not begin with ``{``
or blank space; "none" is no ``Tools`` at all (the entry peer drops them). One call per
answer. ``ToolCallParser`` reads the answer text back, incrementally for streaming:
text, or a call's name and then its arguments in pieces.

Earlier turns of a tool conversation are rendered into the same plain text: an assistant
turn that called functions says the calls in the JSON shape above, and a ``tool`` message
becomes a user turn naming the function and call it answers. ``check_history`` refuses a
``tool`` message whose ``tool_call_id`` matches no earlier assistant call.

Bounds: at most ``MAX_TOOLS`` functions, names as OpenAI's (``^[a-zA-Z0-9_-]{1,64}$``),
descriptions up to ``MAX_DESCRIPTION_CHARS``, every parameters schema under
``mesh.inference.output_format``'s checks, and all of it together at most
``MAX_TOOLS_BYTES`` of JSON (it all goes into the prompt).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mesh.errors import InvalidRequest
from mesh.inference import output_format
from mesh.inference.output_format import OutputFormat

MAX_TOOLS = 64
MAX_DESCRIPTION_CHARS = 4096
MAX_TOOLS_BYTES = 64 * 1024  # every function's name, description and schema together
MAX_CALLS_PER_MESSAGE = 64
MAX_CALL_ID_CHARS = 128
MAX_ARGUMENTS_CHARS = 64 * 1024
CHOICES = ("auto", "required")  # plus a function's name ("none": no Tools)
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL_HEAD = re.compile(r'\{"name": "([a-zA-Z0-9_-]{1,64})", "arguments": ')
_HELD = " \t\r\n}"  # the end of a call ("}" and blank space) is held back while streaming


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: str = '{"type":"object","properties":{}}'  # the JSON schema as JSON text

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant turn made: OpenAI's ``{"id", "type": "function", "function":
    {"name", "arguments"}}`` (``arguments``: JSON text, as OpenAI sends it)."""

    id: str
    name: str
    arguments: str

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_wire(cls, d: Any) -> ToolCall:
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("id", "name", "arguments")):
            raise InvalidRequest("a tool call is a map with string id, name and arguments")
        return cls(d["id"], d["name"], d["arguments"]).check()

    def check(self, where: str = "tool call") -> ToolCall:
        if not 0 < len(self.id) <= MAX_CALL_ID_CHARS:
            raise InvalidRequest(f"{where}.id must be a string of 1..{MAX_CALL_ID_CHARS} characters")
        if not NAME.match(self.name):
            raise InvalidRequest(f"{where}.function.name must be 1..64 of a-z, A-Z, 0-9, _ and -")
        if len(self.arguments) > MAX_ARGUMENTS_CHARS:
            raise InvalidRequest(f"{where}.function.arguments is over {MAX_ARGUMENTS_CHARS} characters")
        return self


@dataclass(frozen=True)
class Tools:
    """The functions a request offers and how the model may use them: ``choice`` is
    "auto", "required", or the name of the one function it must call."""

    functions: tuple[Tool, ...]
    choice: str = "auto"

    @property
    def forced(self) -> str | None:
        return None if self.choice in CHOICES else self.choice

    def to_wire(self) -> dict[str, Any]:
        return {"functions": [t.to_wire() for t in self.functions], "choice": self.choice}

    @classmethod
    def from_wire(cls, d: Any) -> Tools:
        if not isinstance(d, dict) or not isinstance(d.get("functions"), list) or not isinstance(d.get("choice"), str):
            raise InvalidRequest("tools must be a map with a functions list and a choice")
        if len(d["functions"]) > MAX_TOOLS:
            raise InvalidRequest(f"at most {MAX_TOOLS} tools")
        fns = []
        for f in d["functions"]:
            if not isinstance(f, dict) or not all(isinstance(f.get(k), str) for k in ("name", "description",
                                                                                      "parameters")):
                raise InvalidRequest("a tool is a map with string name, description and parameters")
            fns.append(Tool(f["name"], f["description"], f["parameters"]))
        return cls(tuple(fns), d["choice"]).check()

    @classmethod
    def from_openai(cls, tools: Any, choice: Any) -> Tools | None:
        """OpenAI's ``tools`` and ``tool_choice``; None when no tool may be called
        (none offered, or ``tool_choice`` "none"). Cheap checks only (``grammar_text``
        compiles the schemas). Errors name the field (``tools[2].function.name``)."""
        if tools is None or tools == []:
            if choice not in (None, "none", "auto"):
                raise InvalidRequest("tool_choice needs tools")
            return None
        if not isinstance(tools, list):
            raise InvalidRequest("tools must be a list of {\"type\": \"function\", \"function\": {...}}")
        if len(tools) > MAX_TOOLS:
            raise InvalidRequest(f"tools has {len(tools)} entries; the limit is {MAX_TOOLS}")
        fns = []
        for i, t in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
                raise InvalidRequest(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
            f = t["function"]
            name, desc = f.get("name"), f.get("description", "")
            if not isinstance(name, str) or not NAME.match(name):
                raise InvalidRequest(f"{where}.function.name must be 1..64 of a-z, A-Z, 0-9, _ and -")
            if not isinstance(desc, str) or len(desc) > MAX_DESCRIPTION_CHARS:
                raise InvalidRequest(f"{where}.function.description must be a string of at most "
                                     f"{MAX_DESCRIPTION_CHARS} characters")
            params = f.get("parameters", {"type": "object", "properties": {}})
            try:
                schema = OutputFormat.for_schema(params).schema
            except InvalidRequest as e:
                raise InvalidRequest(_renamed(str(e), f"{where}.function.parameters")) from None
            fns.append(Tool(name, desc, schema))
        if choice is None or choice == "auto":
            picked = "auto"
        elif choice == "none":
            return None
        elif choice == "required":
            picked = "required"
        elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
            picked = choice["function"].get("name")
            if not isinstance(picked, str) or picked not in {f.name for f in fns}:
                raise InvalidRequest(f"tool_choice names function {str(picked)[:64]!r}, which is not in tools")
        else:
            raise InvalidRequest('tool_choice must be "none", "auto", "required" or '
                                 '{"type": "function", "function": {"name": ...}}')
        return cls(tuple(fns), picked).check()

    def check(self) -> Tools:
        """The cheap, pure checks (see the module docstring); returns self."""
        if not 0 < len(self.functions) <= MAX_TOOLS:
            raise InvalidRequest(f"tools must hold 1..{MAX_TOOLS} functions")
        names = set()
        size = 0
        for i, f in enumerate(self.functions):
            if not NAME.match(f.name):
                raise InvalidRequest(f"tools[{i}].function.name must be 1..64 of a-z, A-Z, 0-9, _ and -")
            if f.name in names:
                raise InvalidRequest(f"tools[{i}].function.name {f.name!r} is given twice")
            names.add(f.name)
            if len(f.description) > MAX_DESCRIPTION_CHARS:
                raise InvalidRequest(f"tools[{i}].function.description is over {MAX_DESCRIPTION_CHARS} characters")
            try:
                OutputFormat("json_schema", f.parameters).check()
            except InvalidRequest as e:
                raise InvalidRequest(_renamed(str(e), f"tools[{i}].function.parameters")) from None
            size += len(f.name) + len(f.description.encode("utf-8")) + len(f.parameters.encode("utf-8"))
        if size > MAX_TOOLS_BYTES:
            raise InvalidRequest(f"tools are {size} bytes of names, descriptions and schemas together; "
                                 f"the limit is {MAX_TOOLS_BYTES}")
        if self.choice not in CHOICES and self.choice not in names:
            raise InvalidRequest(f"tool_choice names function {self.choice[:64]!r}, which is not in tools")
        return self


def _renamed(message: str, where: str) -> str:
    return message.replace(output_format._FIELD, where)


# -- history ------------------------------------------------------------------------------


def check_history(messages) -> None:
    """Every ``tool`` message answers a call an earlier assistant turn made
    (``messages``: ``mesh.inference.backend.Message`` items)."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        if m.role == "assistant":
            if len(m.tool_calls) > MAX_CALLS_PER_MESSAGE:
                raise InvalidRequest(f"messages[{i}].tool_calls: at most {MAX_CALLS_PER_MESSAGE}")
            for j, c in enumerate(m.tool_calls):
                c.check(f"messages[{i}].tool_calls[{j}]")
                calls.add(c.id)
        elif m.tool_calls:
            raise InvalidRequest(f"messages[{i}]: only assistant messages carry tool_calls")
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(f"messages[{i}]: a tool message needs the tool_call_id it answers")
            if m.tool_call_id not in calls:
                raise InvalidRequest(f"messages[{i}]: tool message with tool_call_id {m.tool_call_id[:128]!r} "
                                     "matches no earlier assistant tool call")
        elif m.tool_call_id is not None:
            raise InvalidRequest(f"messages[{i}]: only tool messages carry a tool_call_id")


def uses_tools(messages) -> bool:
    return any(m.role == "tool" or m.tool_calls for m in messages)


# -- the prompt ---------------------------------------------------------------------------


def call_text(name: str, arguments: str) -> str:
    """A call in the exact shape the grammar makes (``arguments``: JSON text; anything
    else is given as a JSON string)."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = json.dumps(arguments, ensure_ascii=False)
    return f'{{"name": "{name}", "arguments": {args}}}'


def system_section(tools: Tools) -> str:
    lines = ["You can call functions. The functions you can call:"]
    for f in tools.functions:
        desc = f" {f.description}" if f.description else ""
        lines.append(f"- {f.name}:{desc} Its arguments follow this JSON schema: {f.parameters}")
    lines.append("To call a function, answer with nothing but one JSON object of this shape:")
    lines.append('{"name": "<function name>", "arguments": {<the arguments, as its schema says>}}')
    if tools.forced is not None:
        lines.append(f"Call the function {tools.forced} now.")
    elif tools.choice == "required":
        lines.append("Call one of these functions now.")
    else:
        lines.append("If no function helps, answer in plain text instead.")
    lines.append("A function's result comes back in a later message.")
    return "\n".join(lines)


def prompt_messages(messages, tools: Tools | None, make) -> tuple:
    """The conversation as plain system / user / assistant turns: the tools' system
    section (appended to the first system message, or a new one at the start), calls as
    JSON, ``tool`` results as user turns. ``make(role, content)`` builds a message."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out = []
    for m in messages:
        if m.role == "tool":
            name = names.get(m.tool_call_id, "a function")
            out.append(make("user", f"Result of {name} (call {m.tool_call_id}):\n{m.content}"))
        elif m.tool_calls:
            calls = "\n".join(call_text(c.name, c.arguments) for c in m.tool_calls)
            out.append(make("assistant", f"{m.content}\n{calls}" if m.content else calls))
        else:
            out.append(make(m.role, m.content))
    if tools is not None:
        section = system_section(tools)
        if out and out[0].role == "system":
            out[0] = make("system", f"{out[0].content}\n\n{section}" if out[0].content else section)
        else:
            out.insert(0, make("system", section))
    return tuple(out)


# -- the grammar --------------------------------------------------------------------------


def grammar_text(tools: Tools) -> str:
    """The llama.cpp grammar (GBNF) for ``tools``, checked; ``InvalidRequest`` naming
    the function whose schema cannot be compiled. Imports llama.cpp."""
    from llama_cpp.llama_grammar import SchemaConverter

    tools.check()
    conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    calls = []
    for i, f in enumerate(tools.functions):
        if tools.forced is not None and f.name != tools.forced:
            continue
        try:
            schema = conv.resolve_refs(json.loads(f.parameters), f"tool{i}")
            args = conv.visit(schema, f"tool{i}-args")
        except (AssertionError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as e:
            raise InvalidRequest(f"tools[{i}].function.parameters cannot be compiled to a grammar: "
                                 f"{str(e)[:300] or type(e).__name__}") from None
        head = json.dumps(f'{{"name": "{f.name}", "arguments": ')
        calls.append(conv._add_rule(f"tool{i}-call", f'{head} {args} "}}"'))
    alts = list(calls)
    if tools.choice == "auto":
        alts.append(conv._add_rule("plain-text", r"[^{ \t\r\n] [^\x00]*"))
    conv._add_rule("root", " | ".join(alts))
    text = conv.format_grammar()
    try:
        output_format.check_grammar(text)
    except InvalidRequest as e:
        raise InvalidRequest(_renamed(str(e), "tools")) from None
    return text


# -- the answer ---------------------------------------------------------------------------


class ToolCallParser:
    """Answer text -> plain text or one call, incrementally. ``feed`` and ``finish``
    return events: ``("text", s)``, ``("call", name)`` (once, when the name is known) and
    ``("args", s)`` (the call's arguments, JSON text in pieces). Text that turns out not
    to be a call (it never matched the grammar's shape) comes out as text."""

    def __init__(self) -> None:
        self.mode: str | None = None  # None (undecided), "text" or "call"
        self.name: str | None = None
        self._buf = ""
        self._sent = 0  # characters of the arguments sent

    def feed(self, s: str) -> list[tuple[str, str]]:
        if self.mode == "text":
            return [("text", s)] if s else []
        self._buf += s
        if self.mode is None:
            lead = self._buf.lstrip()
            if not lead:
                return []
            if not lead.startswith("{"):
                return self._as_text()
            self._buf = lead
            m = _CALL_HEAD.match(self._buf)
            if m is None:
                return self._as_text() if not _could_be_head(self._buf) else []
            self.mode, self.name = "call", m.group(1)
            self._buf = self._buf[m.end():]
            return [("call", self.name), *self._args(final=False)]
        return self._args(final=False)

    def finish(self) -> list[tuple[str, str]]:
        if self.mode == "call":
            return self._args(final=True)
        if self.mode is None and self._buf:
            return self._as_text()
        return []

    def _as_text(self) -> list[tuple[str, str]]:
        self.mode, text, self._buf = "text", self._buf, ""
        return [("text", text)] if text else []

    def _args(self, *, final: bool) -> list[tuple[str, str]]:
        if final:
            body = self._buf.rstrip()
            end = len(body) - 1 if body.endswith("}") else len(body)  # the call's own closing brace
            end = len(body[:end].rstrip())
        else:
            end = len(self._buf.rstrip(_HELD))
        out = self._buf[self._sent:end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return [("args", out)] if out else []


def _could_be_head(buf: str) -> bool:
    """``buf`` is still a beginning of ``{"name": "<name>", "arguments": ``."""
    probe = '{"name": "'
    if len(buf) <= len(probe):
        return probe.startswith(buf)
    if not buf.startswith(probe):
        return False
    rest = buf[len(probe):]
    name = re.match(r"[a-zA-Z0-9_-]{0,64}", rest).group(0)
    tail = rest[len(name):]
    return '", "arguments": '.startswith(tail) and (bool(name) or not tail)


def parse_answer(text: str) -> tuple[str, ToolCall | None]:
    """A whole answer: (text, None), or ("", a call with an empty id) when it is a call."""
    p = ToolCallParser()
    events = p.feed(text) + p.finish()
    if p.mode == "call":
        return "", ToolCall("", p.name or "", "".join(s for k, s in events if k == "args"))
    return "".join(s for k, s in events if k == "text"), None
