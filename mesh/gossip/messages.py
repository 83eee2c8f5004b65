"""The gossip wire: typed messages and news items, with explicit versioned codecs.

A message is one datagram (one-way, may be lost, may arrive late)::

    [version, type, fields, news]

* ``version``: ``PROTOCOL_VERSION``; a receiver accepts ``SUPPORTED_VERSIONS``.
* ``type``: an index into ``MESSAGE_TYPES``; ``fields`` a map, unknown keys ignored.
* ``news``: piggybacked dissemination items (SWIM section 4), each
  ``[kind, ...]`` with ``kind`` an index into ``NEWS_KINDS``. Items of a kind this peer
  does not know are skipped, so newer peers may add kinds.
* ``fields`` of any type may hold ``l``: the sender's own load ``[seq, running,
  waiting]`` (``mesh.gossip.load``), authenticated by the envelope around the message.
* Trailing array elements after ``news`` are ignored (append-only).

News items are packed once when queued (``pack_news``) and spliced into each message
that carries them, so the byte budget of a message is exact and cheap to enforce.

``decode`` raises ``GossipError`` for anything it refuses: oversize (checked before
parsing), bad msgpack, wrong version, unknown type, wrong field types, too many items.
Records inside are type-checked here and verified later (``verify_record``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.gossip import wire
from mesh.gossip.errors import GossipError, GossipReason
from mesh.gossip.load import Load
from mesh.gossip.member import STATUS_CODE, STATUS_CODES, Status
from mesh.gossip.record import (
    MAX_ADDRESS_CHARS,
    MAX_ADDRESSES,
    PEER_ID_BYTES,
    MemberRecord,
    RecordCache,
)

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = range(1, 2)

# Message types. ONLY APPEND TO THIS LIST: the index is the wire code.
MESSAGE_TYPES = ("ping", "ack", "ping_req", "nack", "gossip", "sync")
# News kinds. ONLY APPEND TO THIS LIST.
NEWS_KINDS = ("alive", "suspect", "dead", "load")
LOAD_FIELD = "l"  # in any message's fields: the sender's own load


# --- news -------------------------------------------------------------------------


@dataclass(frozen=True)
class Alive:
    """An owner-signed record: join, meta refresh, refutation, or leave (``record.left``)."""

    record: MemberRecord


@dataclass(frozen=True)
class Suspect:
    """``sender`` failed to reach ``(peer_id, incarnation)`` directly and indirectly."""

    peer_id: bytes
    incarnation: int
    sender: bytes


@dataclass(frozen=True)
class Dead:
    """``sender`` declared ``(peer_id, incarnation)`` dead when its suspicion timed out."""

    peer_id: bytes
    incarnation: int
    sender: bytes


@dataclass(frozen=True)
class LoadNews:
    """``peer_id``'s load as the sender last learned it (not signed by ``peer_id``:
    see ``mesh.gossip.load`` for the rules that bound a lie)."""

    peer_id: bytes
    load: Load


News = Alive | Suspect | Dead | LoadNews


def pack_news(item: News) -> bytes:
    if isinstance(item, Alive):
        return wire.pack([0, *item.record.to_parts()])
    if isinstance(item, LoadNews):
        return wire.pack([3, item.peer_id, *item.load.to_wire()])
    kind = 1 if isinstance(item, Suspect) else 2
    return wire.pack([kind, item.peer_id, item.incarnation, item.sender])


def _news(raw: object, parse) -> News | None:
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], int) or isinstance(raw[0], bool):
        raise wire.bad("a news item is [kind, ...]")
    kind = raw[0]
    if kind == 3:
        return _load_news(raw)
    if kind == 0:
        return Alive(parse(raw[1:3]))
    if kind in (1, 2):
        if len(raw) < 4:
            raise wire.bad("suspect/dead is [kind, peer_id, incarnation, sender]")
        pid = wire.blob(raw[1], "peer id", size=PEER_ID_BYTES)
        inc = wire.uint(raw[2], "incarnation")
        sender = wire.blob(raw[3], "sender", size=PEER_ID_BYTES)
        return Suspect(pid, inc, sender) if kind == 1 else Dead(pid, inc, sender)
    return None  # a kind from a newer peer: skip it


def _load_news(raw: list) -> LoadNews:
    if len(raw) < 5 or type(raw[1]) is not bytes or len(raw[1]) != PEER_ID_BYTES:
        raise GossipError(GossipReason.BAD_LOAD, "load news is [kind, 16-byte peer id, seq, running, waiting]")
    return LoadNews(raw[1], Load.from_wire(raw[2:5]))


# --- messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    seq: int
    target: bytes  # the peer id the sender means to reach (a restarted peer may sit at the address)


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class PingReq:
    """Ask the receiver to ping ``target`` and forward its ack (SWIM section 3.1)."""

    seq: int
    target: bytes
    addresses: tuple[str, ...]  # where the requester would reach the target
    nack: bool  # send a Nack if the target does not answer in time (Lifeguard section 4.1)


@dataclass(frozen=True)
class Nack:
    seq: int


@dataclass(frozen=True)
class Gossip:
    """News only (memberlist's gossip timer), between probes."""


@dataclass(frozen=True)
class SyncEntry:
    status: Status
    incarnation: int
    record: MemberRecord


@dataclass(frozen=True)
class DigestEntry:
    """What the sender holds about one member, without the record (about 28 bytes)."""

    peer_id: bytes
    status: Status
    incarnation: int  # the incarnation ``status`` is about
    record_key: tuple[int, bool, int]  # MemberRecord.key of the record held


@dataclass(frozen=True)
class Sync:
    """Push-pull anti-entropy with digests (see ``mesh.gossip.sync``).

    A request carries the sender's digest; the answer carries the entries the requester
    lacks plus the answerer's digest; a third message carries what the answerer lacks.
    """

    entries: tuple[SyncEntry, ...]  # records (with status) the receiver is believed to lack
    digest: tuple[DigestEntry, ...] | None  # the sender's whole view; None on the last leg
    reply: bool  # the receiver should answer with entries and its own digest
    join: bool  # sent by join(): the answer tells the joiner it is in


Body = Ping | Ack | PingReq | Nack | Gossip | Sync
_TYPE_CODE = {Ping: 0, Ack: 1, PingReq: 2, Nack: 3, Gossip: 4, Sync: 5}


def type_name(body: Body) -> str:
    return MESSAGE_TYPES[_TYPE_CODE[type(body)]]


def _fields(body: Body) -> dict:
    if isinstance(body, Ping):
        return {"s": body.seq, "to": body.target}
    if isinstance(body, (Ack, Nack)):
        return {"s": body.seq}
    if isinstance(body, PingReq):
        return {"s": body.seq, "to": body.target, "addr": list(body.addresses), "nack": body.nack}
    if isinstance(body, Sync):
        entries = [[STATUS_CODE[e.status], e.incarnation, *e.record.to_parts()] for e in body.entries]
        out = {"e": entries, "r": body.reply, "j": body.join}
        if body.digest is not None:
            out["d"] = [
                [d.peer_id, STATUS_CODE[d.status], d.incarnation, d.record_key[0], d.record_key[1], d.record_key[2]]
                for d in body.digest
            ]
        return out
    return {}


def encode(body: Body, news: list[bytes] | tuple[bytes, ...] = (), *, load: Load | None = None) -> bytes:
    """One message; ``news`` are items already packed by ``pack_news``; ``load`` the
    sender's own load."""
    fields = _fields(body)
    if load is not None:
        fields[LOAD_FIELD] = load.to_wire()
    head = wire.pack(PROTOCOL_VERSION) + wire.pack(_TYPE_CODE[type(body)]) + wire.pack(fields)
    return b"\x94" + head + wire.array_header(len(news)) + b"".join(news)


@dataclass(frozen=True)
class Message:
    body: Body
    news: list[News]
    load: Load | None  # the sender's own load, when it sent one


def decode(
    data: bytes, *, max_bytes: int, max_news: int, max_entries: int, records: RecordCache | None = None
) -> tuple[Body, list[News]]:
    """One message and its news. ``records``: a cache of parsed records (optional)."""
    msg = decode_message(data, max_bytes=max_bytes, max_news=max_news, max_entries=max_entries, records=records)
    return msg.body, msg.news


def decode_message(
    data: bytes, *, max_bytes: int, max_news: int, max_entries: int, records: RecordCache | None = None
) -> Message:
    """One message, its news and the sender's own load (see ``decode``)."""
    parse = MemberRecord.from_parts if records is None else records.parse
    doc = wire.unpack(data, max_bytes=max_bytes)
    if not isinstance(doc, list) or len(doc) < 4:
        raise GossipError(GossipReason.MALFORMED, "a message is [version, type, fields, news]")
    version, code, fields, raw_news = doc[0], doc[1], doc[2], doc[3]
    if not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        raise GossipError(GossipReason.BAD_VERSION, f"version {version!r}")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < len(MESSAGE_TYPES):
        raise GossipError(GossipReason.UNKNOWN_TYPE, f"type {code!r}")
    if not isinstance(fields, dict) or not isinstance(raw_news, list):
        raise wire.bad("fields must be a map and news a list")
    if len(raw_news) > max_news:
        raise wire.bad(f"more than {max_news} news items")
    news = [n for n in (_news(r, parse) for r in raw_news) if n is not None]
    raw_load = fields.get(LOAD_FIELD)
    load = None if raw_load is None else Load.from_wire(raw_load)
    return Message(_body(code, fields, max_entries, parse), news, load)


def _status(value: object) -> Status:
    code = wire.uint(value, "status")
    if code >= len(STATUS_CODES):
        raise wire.bad(f"unknown status {code}")
    return STATUS_CODES[code]


def _digest_entry(d: object) -> DigestEntry:
    if not isinstance(d, list) or len(d) < 6 or not isinstance(d[4], bool):
        raise wire.bad("a digest entry is [peer_id, status, incarnation, record inc, left, version]")
    key = (wire.uint(d[3], "record incarnation"), d[4], wire.uint(d[5], "version"))
    return DigestEntry(wire.blob(d[0], "peer id", size=PEER_ID_BYTES), _status(d[1]), wire.uint(d[2], "inc"), key)


def _body(code: int, f: dict, max_entries: int, parse) -> Body:
    name = MESSAGE_TYPES[code]
    if name == "gossip":
        return Gossip()
    if name == "sync":
        raw = wire.get(f, "e", list)
        if len(raw) > max_entries:
            raise wire.bad(f"more than {max_entries} sync entries")
        entries = []
        for e in raw:
            if not isinstance(e, list) or len(e) < 4:
                raise wire.bad("a sync entry is [status, incarnation, body, signature]")
            status, inc = _status(e[0]), wire.uint(e[1], "incarnation")
            entries.append(SyncEntry(status, inc, parse(e[2:4])))
        digest = None
        raw_digest = wire.get(f, "d", list, optional=True)
        if raw_digest is not None:
            if len(raw_digest) > max_entries:
                raise wire.bad(f"more than {max_entries} digest entries")
            digest = tuple(_digest_entry(d) for d in raw_digest)
        return Sync(tuple(entries), digest, wire.get(f, "r", bool), wire.get(f, "j", bool))
    seq = wire.uint(f.get("s"), "seq")
    if name == "ack":
        return Ack(seq)
    if name == "nack":
        return Nack(seq)
    target = wire.blob(f.get("to"), "target", size=PEER_ID_BYTES)
    if name == "ping":
        return Ping(seq, target)
    addresses = wire.get(f, "addr", list)
    if len(addresses) > MAX_ADDRESSES or not all(
        isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS_CHARS for a in addresses
    ):
        raise wire.bad("ping-req addresses")
    return PingReq(seq, target, tuple(addresses), wire.get(f, "nack", bool))
