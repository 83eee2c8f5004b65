"""Where to look for peers when multicast cannot reach: ``--join`` seeds and remembered peers.

``parse_seed("host:port")`` turns one ``--join`` value into a ``tcp://`` address (or
raises ``ConfigError`` saying what is wrong); ``seed_hints`` makes hints of them.
``parse_seed_with_key("host:port@KEY")`` also reads the peer's transport key (the text
form of ``mesh.identity.transport``), which a CurveZMQ connection must name.

``RememberedPeers`` keeps the addresses gossip taught us across restarts, in
``known_peers.json`` in the data dir: one entry per peer id, the most recently seen
``max_entries`` kept, written atomically (temp file, fsync, rename) so a crash leaves
either the old file or the new one. The file is a cache: an unreadable or corrupt one is
logged and treated as empty, never a reason not to start. Like every hint, a remembered
address is tried, not trusted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path

from mesh.discovery.hints import Hint, Source, is_peer_id, tcp_address
from mesh.errors import ConfigError, IdentityError
from mesh.identity.transport import is_key_text, key_from_text, key_text
from mesh.paths import write_atomic

log = logging.getLogger(__name__)

KNOWN_PEERS_FILE = "known_peers.json"
MAX_REMEMBERED = 256
MAX_FILE_BYTES = 1 << 20  # refuse to parse a file far larger than MAX_REMEMBERED entries
_FORMAT = 1
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def _check_host(host: str, *, text: str) -> str:
    """A normalised IP literal or hostname; ConfigError otherwise."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ConfigError(f"--join {text!r}: {host!r} is neither an IP address nor a host name")
    if name.replace(".", "").isdigit():
        raise ConfigError(f"--join {text!r}: {host!r} is not a valid IPv4 address")
    return name.lower()


def _check_port(port_text: str, *, text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"--join {text!r}: port must be a number in 1..65535, got {port_text!r}")
    return int(port_text)


def parse_seed(text: str, *, default_port: int | None = None) -> str:
    """``HOST:PORT`` (or ``[IPv6]:PORT``, or ``tcp://...``) -> ``tcp://host:port``.

    With ``default_port``, a bare ``HOST`` (or ``[IPv6]``) is accepted too."""
    raw = text.strip()
    if not raw:
        raise ConfigError("--join needs HOST:PORT, got an empty value")
    raw = raw.removeprefix("tcp://")
    if "/" in raw:
        raise ConfigError(f"--join {text!r}: expected HOST:PORT, not a URL with a path")
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ConfigError(f"--join {text!r}: missing ']' after the IPv6 address")
        host, rest = raw[1:end], raw[end + 1 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--join {text!r}: {host!r} in brackets is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ConfigError(f"--join {text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif raw.count(":") > 1:
        raise ConfigError(f"--join {text!r}: write an IPv6 address in brackets, e.g. [{raw}]:7411")
    elif ":" in raw:
        host, port_text = raw.split(":")
    else:
        host, port_text = raw, None
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"--join {text!r}: expected HOST:PORT (the port is missing)")
        port = default_port
    else:
        port = _check_port(port_text, text=text)
    return tcp_address(_check_host(host, text=text), port)


def parse_seeds(texts: Iterable[str], *, default_port: int | None = None) -> tuple[str, ...]:
    """Every ``--join`` value, parsed, duplicates dropped, order kept."""
    out: dict[str, None] = {}
    for t in texts:
        out[parse_seed(t, default_port=default_port)] = None
    return tuple(out)


def parse_seed_with_key(text: str, *, default_port: int | None = None) -> tuple[str, bytes | None]:
    """``HOST:PORT[@KEY]`` -> (``tcp://host:port``, key or None)."""
    raw, sep, key_part = text.strip().rpartition("@")
    if not sep:
        return parse_seed(text, default_port=default_port), None
    try:
        key = key_from_text(key_part)
    except IdentityError:
        raise ConfigError(
            f"--join {text!r}: after '@' comes the peer's transport key (52 characters; `mesh status` shows it)"
        ) from None
    return parse_seed(raw, default_port=default_port), key


def seed_text(address: str, key: bytes | None) -> str:
    """The config form of a seed: ``tcp://host:port`` or ``tcp://host:port@KEY``."""
    return address if key is None else f"{address}@{key_text(key)}"


def split_seed_text(seed: str) -> tuple[str, bytes | None]:
    """Inverse of ``seed_text`` (a ``tcp://`` address never holds '@')."""
    address, sep, key = seed.partition("@")
    return address, (key_from_text(key) if sep else None)


def seed_hints(addresses: Iterable[str], *, now: float) -> list[Hint]:
    return [Hint(address=a, source=Source.SEED, seen_at=now) for a in addresses]


class RememberedPeers:
    """Peers learned by gossip, kept across restarts; see the module docstring.

    In memory it is a map peer id -> Hint; ``merge`` is pure bookkeeping, only ``load``
    and ``save`` touch the disk."""

    def __init__(self, path: Path, *, max_entries: int = MAX_REMEMBERED) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = Path(path)
        self.max_entries = max_entries
        self._by_id: dict[str, Hint] = {}
        self._dirty = False

    @classmethod
    def in_data_dir(cls, root: Path, **kwargs) -> RememberedPeers:
        return cls(Path(root) / KNOWN_PEERS_FILE, **kwargs)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def dirty(self) -> bool:
        """True when there are changes not yet saved."""
        return self._dirty

    def hints(self) -> list[Hint]:
        """Remembered peers, most recently seen first, as ``Source.REMEMBERED`` hints."""
        return sorted(self._by_id.values(), key=lambda h: (-h.seen_at, h.peer_id or ""))

    def merge(self, hints: Iterable[Hint]) -> bool:
        """Remember these (hints without a peer id are skipped: seeds are given each start).

        A peer's newer sighting replaces its older one, and an older sighting of another
        peer at the same address; past ``max_entries`` the least recently seen are forgotten. Returns True if anything changed."""
        changed = False
        for h in hints:
            if h.peer_id is None or not is_peer_id(h.peer_id) or not math.isfinite(h.seen_at):
                continue
            try:
                address = parse_seed(h.address)
            except ConfigError:
                continue
            old = self._by_id.get(h.peer_id)
            if old is not None and old.seen_at >= h.seen_at:
                continue
            new = Hint(address=address, source=Source.REMEMBERED, seen_at=h.seen_at, peer_id=h.peer_id,
                       transport_key=h.transport_key)
            if new != old:
                self._by_id[h.peer_id] = new
                changed = True
            # one peer per address: an older sighting of another peer there (it restarted
            # with a new identity, or rotated its keys) would bring back a stale key
            for pid in [p for p, o in self._by_id.items()
                        if p != h.peer_id and o.address == address and o.seen_at <= h.seen_at]:
                del self._by_id[pid]
                changed = True
        if len(self._by_id) > self.max_entries:
            keep = self.hints()[: self.max_entries]
            self._by_id = {h.peer_id: h for h in keep if h.peer_id}
            changed = True
        self._dirty |= changed
        return changed

    def forget(self, peer_id: str) -> bool:
        gone = self._by_id.pop(peer_id, None) is not None
        self._dirty |= gone
        return gone

    # -- disk ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, *, max_entries: int = MAX_REMEMBERED) -> RememberedPeers:
        """Read ``path``; a missing file is an empty store, a corrupt one is logged and
        ignored, an unreadable one (permissions, I/O) is a ConfigError."""
        store = cls(path, max_entries=max_entries)
        try:
            with open(store.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return store
        except OSError as e:
            raise ConfigError(f"cannot read {store.path}: {e.strerror}") from e
        if len(data) > MAX_FILE_BYTES:
            log.warning("%s is larger than %d bytes; ignoring it", store.path, MAX_FILE_BYTES)
            return store
        store.merge(_entries_from_json(data, path=store.path))
        store._dirty = False
        return store

    def save(self) -> None:
        """Write atomically (temp file in the same dir, fsync, rename); mode 0600."""
        doc = {
            "format": _FORMAT,
            "peers": [
                {"id": h.peer_id, "address": h.address, "seen_at": h.seen_at}
                | ({"c": key_text(h.transport_key)} if h.transport_key else {})
                for h in self.hints()
            ],
        }
        data = json.dumps(doc, indent=1).encode()
        try:
            write_atomic(self.path, data, make_parents=False)
        except OSError as e:
            raise ConfigError(f"cannot write {self.path}: {e.strerror}") from e
        self._dirty = False


def _entries_from_json(data: bytes, *, path: Path) -> list[Hint]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s is not valid JSON (%s); starting without remembered peers", path, e)
        return []
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("peers"), list):
        log.warning("%s has an unknown layout; starting without remembered peers", path)
        return []
    out: list[Hint] = []
    skipped = 0
    for e in doc["peers"]:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("id"), str)
            and isinstance(e.get("address"), str)
            and isinstance(e.get("seen_at"), (int, float))
            and not isinstance(e.get("seen_at"), bool)
            and math.isfinite(e["seen_at"])
        ):
            skipped += 1
            continue
        curve = e.get("c")
        key = key_from_text(curve) if isinstance(curve, str) and is_key_text(curve) else None
        out.append(Hint(address=e["address"], source=Source.REMEMBERED, seen_at=float(e["seen_at"]), peer_id=e["id"],
                        transport_key=key))
    if skipped:
        log.warning("%s: skipped %d malformed entries", path, skipped)
    return out
