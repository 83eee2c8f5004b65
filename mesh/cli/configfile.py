"""``mesh.toml``: every flag of a command, settable in a file.

The file is TOML (read with the standard library's ``tomllib``). Its keys are the long
flag names without the dashes, written with dashes or underscores: ``rpc-port = 7411``,
``rpc_port = 7411``, ``join = ["10.0.0.2:7411"]``, ``no-mdns = true``. Value types follow
the flag: a string, an integer or a float for a flag that takes one value (a string is
passed through the flag's own type, so ``threads = 2`` and ``threads = "2"`` both work
only where the flag would accept them), a list for a repeatable flag, and ``true`` or
``false`` for a switch. An unknown key or a wrong type is an error naming the key and
the file, never ignored.

Precedence: a flag given on the command line wins over the file, the file wins over the
flag's built-in default (including defaults taken from the environment, such as
``MESH_CLOUD_URL``). A repeatable flag given on the command line replaces the file's
list; it does not add to it.

This works from the argparse parser itself, so a flag added to the command later is a
valid key at once, with no list to keep in step.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

CONFIG_FILE = "mesh.toml"
MAX_CONFIG_BYTES = 256 * 1024
NOT_KEYS = frozenset({"help", "version", "config"})  # flags that make no sense in the file


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", default=None,
        help=f"read settings from this TOML file (default: {CONFIG_FILE} in the data dir, if present); "
             "flags on the command line win over it",
    )


def key_of(action: argparse.Action) -> str | None:
    """The file key of a flag: its first long option without the dashes."""
    for opt in action.option_strings:
        if opt.startswith("--"):
            return opt[2:]
    return None


def _is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0 and isinstance(action.const, bool)


def _is_list(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+") or isinstance(action.nargs, int)


def _convert_one(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    bad = f"{source}: {key} = {value!r}: "
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(bad + f"expected {_kind(action)}, got {_toml_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(bad + "not a finite number")
    typ = action.type
    if typ is None or typ is str:
        if not isinstance(value, str):
            raise ConfigError(bad + f"expected a string, got {_toml_type(value)} (write it in quotes)")
        out: Any = value
    elif typ is int:
        if not isinstance(value, int):
            raise ConfigError(bad + f"expected an integer, got {_toml_type(value)}")
        out = value
    elif typ is float:
        if not isinstance(value, (int, float)):
            raise ConfigError(bad + f"expected a number, got {_toml_type(value)}")
        out = float(value)
    else:
        try:
            out = typ(value if isinstance(value, str) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigError(bad + f"not a valid value: {e}") from None
    if action.choices is not None and out not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise ConfigError(bad + f"must be one of {choices}")
    return out


def _kind(action: argparse.Action) -> str:
    if _is_switch(action):
        return "true or false"
    if _is_list(action):
        return "a list"
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _convert(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    if _is_switch(action):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} = {value!r}: expected true or false, got {_toml_type(value)}")
        # `no-mdns = true` sets the flag; `no-mdns = false` leaves it as if not given
        return action.const if value else action.default
    if _is_list(action):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a list, e.g. {key} = [{value!r}]")
        return [_convert_one(action, key, v, source) for v in value]
    if action.nargs not in (None, "?"):
        raise ConfigError(f"{source}: {key} cannot be set in a config file")
    return _convert_one(action, key, value, source)


def load_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path`` (ConfigError if unreadable or not TOML)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def values_from_doc(parser: argparse.ArgumentParser, doc: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Check a parsed file against the parser's flags: ``{dest: value}``, or ConfigError
    naming the first bad key and the file."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        key = key_of(action)
        if key is not None and key not in NOT_KEYS and action.dest is not argparse.SUPPRESS:
            actions[key] = action
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, value in doc.items():
        key = raw_key.replace("_", "-")
        if key in seen:
            raise ConfigError(f"{source}: {raw_key!r} and {seen[key]!r} set the same flag --{key}; keep one")
        seen[key] = raw_key
        if isinstance(value, dict):
            raise ConfigError(f"{source}: {raw_key!r} is a table; keys are {parser.prog}'s flags, at the top level")
        action = actions.get(key)
        if action is None:
            if key in NOT_KEYS:
                raise ConfigError(f"{source}: {raw_key!r} cannot be set in a config file")
            hint = _near(key, actions)
            raise ConfigError(f"{source}: unknown key {raw_key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                              + f"; keys are {parser.prog}'s flags without the leading dashes")
        out[action.dest] = _convert(action, raw_key, value, source)
    return out


def _near(key: str, actions: dict[str, argparse.Action]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, list(actions), n=1, cutoff=0.75)
    return close[0] if close else None


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    default_path: Callable[[argparse.Namespace], Path | None],
) -> argparse.Namespace:
    """Parse ``argv`` with defaults from a config file; see the module docstring.

    The file is ``--config PATH`` if given (it must exist), else ``default_path(args)``
    (computed from the command line alone, e.g. the data dir's ``mesh.toml``; skipped if
    absent). Raises ConfigError for a bad file; argparse exits as usual for bad flags."""
    given = _given_on_command_line(parser, argv)
    first = parser.parse_args(argv)
    explicit = getattr(first, "config", None)
    path = Path(explicit).expanduser() if explicit else default_path(first)
    if path is None or (not explicit and not path.exists()):
        return first
    values = values_from_doc(parser, load_file(path), source=str(path))
    for dest, value in values.items():
        if dest not in given:
            setattr(first, dest, value)
    first.config_file = str(path)
    return first


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The dests the command line sets: parse once with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    saved_defaults = dict(parser._defaults)
    try:
        for a, _ in saved:
            if a.dest is not argparse.SUPPRESS and a.option_strings:
                a.default = argparse.SUPPRESS
        parser._defaults = {}
        ns = parser.parse_args(argv)
    finally:
        for a, d in saved:
            a.default = d
        parser._defaults = saved_defaults
    return set(vars(ns))
