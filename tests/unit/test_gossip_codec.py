"""Member records and gossip messages: round trips, and every refusal is a typed GossipError."""

from __future__ import annotations

import random

import msgpack
import pytest

from mesh.errors import MeshError
from mesh.gossip import messages as m
from mesh.gossip.errors import GossipError, GossipReason
from mesh.gossip.member import Status
from mesh.gossip.record import (
    MAX_CREDENTIAL_BYTES,
    MAX_RECORD_BYTES,
    MemberRecord,
    RecordCache,
)
from mesh.testing.network import SimAuthority

LIMITS = {"max_bytes": 512 * 1024, "max_news": 64, "max_entries": 100}


@pytest.fixture
def auth():
    return SimAuthority(random.Random(7))


def test_gossip_error_is_a_mesh_error():
    assert issubclass(GossipError, MeshError)
    e = GossipError(GossipReason.BAD_FIELD, "x")
    assert e.reason is GossipReason.BAD_FIELD and "bad_field: x" in str(e)


# --- records --------------------------------------------------------------------------


def test_record_round_trip_and_verification(auth):
    pid = auth.new_identity()
    meta = {"models": [{"name": "m", "ctx": 2048, "tps": 41.5}], "load": {"active": 1}, "gpu": None}
    r = auth.record(pid, name="laptop", incarnation=3, version=9, meta=meta, addresses=("tcp://10.0.0.5:7411",))
    back = MemberRecord.from_wire(r.to_wire())
    assert back == r and hash(back) == hash(r)
    assert (back.peer_id, back.incarnation, back.version, back.name) == (pid, 3, 9, "laptop")
    assert back.addresses == ("tcp://10.0.0.5:7411",) and back.meta == meta and back.left is False
    assert back.credential == auth.credential(pid)
    assert back.signed_payload().startswith(b"mesh/member/v1\0")
    assert auth.verify_record(back)


def test_record_ordering_incarnation_then_left_then_version(auth):
    pid = auth.new_identity()
    a = auth.record(pid, incarnation=1, version=50)
    b = auth.record(pid, incarnation=2, version=0)
    left = auth.record(pid, incarnation=2, version=0, left=True)
    later = auth.record(pid, incarnation=2, version=7)
    assert a.key < b.key < later.key < left.key


def test_forged_and_tampered_records_fail_verification(auth):
    pid = auth.new_identity()
    assert not auth.verify_record(auth.forge(pid))
    good = auth.record(pid, meta={"load": 1})
    body = good.body.replace(b"load", b"lOad")
    assert not auth.verify_record(MemberRecord.from_parts([body, good.signature]))
    other = auth.new_identity()  # someone else's valid signature over a record claiming pid
    stolen = MemberRecord.create(
        peer_id=pid, name="x", addresses=(), credential=auth.credential(pid), sign=auth.sign_for(other)
    )
    assert not auth.verify_record(stolen)


def _body(**over):
    doc = {"id": b"\x01" * 16, "inc": 0, "ver": 0, "name": "p", "addr": [], "meta": {}, "cred": b"", "left": False}
    doc.update(over)
    return msgpack.packb(doc, use_bin_type=True)


@pytest.mark.parametrize(
    "over",
    [
        {"id": b"\x01" * 15},
        {"id": "not bytes"},
        {"inc": -1},
        {"inc": "1"},
        {"inc": True},
        {"ver": 1.5},
        {"name": ""},
        {"name": "x" * 65},
        {"name": 5},
        {"addr": "tcp://a:1"},
        {"addr": ["no-scheme:1"]},
        {"addr": ["tcp://a:1"] * 9},
        {"meta": []},
        {"meta": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}},
        {"cred": "text"},
        {"cred": b"c" * (MAX_CREDENTIAL_BYTES + 1)},
        {"left": 0},
    ],
)
def test_record_refuses_bad_fields(over):
    with pytest.raises(GossipError) as e:
        MemberRecord.from_parts([_body(**over), b"s" * 32])
    assert e.value.reason is GossipReason.BAD_FIELD


def test_record_refuses_missing_fields_and_bad_shapes():
    doc = msgpack.unpackb(_body())
    del doc["name"]
    for parts in ([msgpack.packb(doc, use_bin_type=True), b"s"], [b"\x93\x01", b"s"], "xy", [b"", b""], [_body()]):
        with pytest.raises(GossipError):
            MemberRecord.from_parts(parts)
    with pytest.raises(GossipError):
        MemberRecord.from_parts([_body(), b"s" * 200])  # signature too long


def test_record_size_cap():
    big = _body(meta={"blob": b"x" * MAX_RECORD_BYTES})
    with pytest.raises(GossipError) as e:
        MemberRecord.from_parts([big, b"s" * 64])
    assert e.value.reason is GossipReason.OVERSIZE
    with pytest.raises(GossipError) as e:
        MemberRecord.from_wire(b"\x00" * (MAX_RECORD_BYTES + 100))
    assert e.value.reason is GossipReason.OVERSIZE


def test_record_create_refuses_non_native_meta(auth):
    pid = auth.new_identity()
    with pytest.raises(GossipError):
        auth.record(pid, meta={"when": object()})
    with pytest.raises(GossipError):
        auth.record(pid, incarnation=1 << 64)


def test_record_cache_parses_each_record_once_and_stays_bounded(auth):
    cache = RecordCache(max_entries=2)
    records = [auth.record(auth.new_identity()) for _ in range(3)]
    first = cache.parse([bytes(records[0].body), bytes(records[0].signature)])
    assert first == records[0] and cache.parse(records[0].to_parts()) is first
    cache.parse(records[1].to_parts())
    cache.parse(records[2].to_parts())  # full: cleared, then this one stored
    assert cache.parse(records[0].to_parts()) is not first
    with pytest.raises(GossipError):
        cache.parse([b"junk", b"sig"])


def test_resigned_keeps_fields_and_signs_again(auth):
    pid = auth.new_identity()
    r = auth.record(pid, meta={"load": 1}, version=4)
    r2 = r.resigned(sign=auth.sign_for(pid), version=5, meta={"load": 2})
    assert (r2.version, r2.meta, r2.name, r2.addresses) == (5, {"load": 2}, r.name, r.addresses)
    assert auth.verify_record(r2) and r2 != r


# --- messages ---------------------------------------------------------------------------


def _samples(auth):
    pid, other = auth.new_identity(), auth.new_identity()
    rec = auth.record(pid, meta={"load": 3})
    news = [m.Alive(rec), m.Suspect(pid, 4, other), m.Dead(other, 2, pid)]
    digest = (m.DigestEntry(pid, Status.SUSPECT, 4, (3, False, 9)), m.DigestEntry(other, Status.LEFT, 1, (1, True, 0)))
    bodies = [
        m.Ping(1, pid),
        m.Ack(2),
        m.PingReq(3, pid, ("tcp://10.0.0.1:7411",), True),
        m.Nack(4),
        m.Gossip(),
        m.Sync((m.SyncEntry(Status.DEAD, 5, rec),), digest, reply=True, join=True),
        m.Sync((), None, reply=False, join=False),
    ]
    return bodies, news


def test_every_message_round_trips_with_news(auth):
    bodies, news = _samples(auth)
    packed = [m.pack_news(n) for n in news]
    for body in bodies:
        got, got_news = m.decode(m.encode(body, packed), **LIMITS)
        assert got == body
        assert got_news == news
        assert m.type_name(body) in m.MESSAGE_TYPES


def test_message_types_are_append_only():
    # The index is the wire code: these must never move.
    assert m.MESSAGE_TYPES[:6] == ("ping", "ack", "ping_req", "nack", "gossip", "sync")
    assert m.NEWS_KINDS[:3] == ("alive", "suspect", "dead")


def _raw(version=1, code=0, fields=None, news=(), *extra):
    fields = {"s": 1, "to": b"\x02" * 16} if fields is None else fields
    return msgpack.packb([version, code, fields, list(news), *extra], use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", GossipReason.MALFORMED),
        (b"\xc1", GossipReason.MALFORMED),
        (b"\x94\x01\x00", GossipReason.MALFORMED),
        (msgpack.packb({"v": 1}), GossipReason.MALFORMED),
        (msgpack.packb([1, 0, {}]), GossipReason.MALFORMED),
        (_raw(version=2), GossipReason.BAD_VERSION),
        (_raw(version="1"), GossipReason.BAD_VERSION),
        (_raw(code=99), GossipReason.UNKNOWN_TYPE),
        (_raw(code=-1), GossipReason.UNKNOWN_TYPE),
        (_raw(code="ping"), GossipReason.UNKNOWN_TYPE),
        (_raw(fields={"s": "1", "to": b"\x02" * 16}), GossipReason.BAD_FIELD),
        (_raw(fields={"s": 1, "to": b"\x02" * 15}), GossipReason.BAD_FIELD),
        (_raw(fields=[]), GossipReason.BAD_FIELD),
        (_raw(news=[[1, b"\x01" * 16, 0]]), GossipReason.BAD_FIELD),
        (_raw(news=[[0, b"junk", b"sig"]]), GossipReason.MALFORMED),
        (_raw(news=["x"]), GossipReason.BAD_FIELD),
        (_raw(news=[[2, b"\x01" * 16, 0, b"\x02" * 16]] * 65), GossipReason.BAD_FIELD),
        (_raw(code=5, fields={"e": [[9, 0, b"", b""]], "r": True, "j": False}), GossipReason.BAD_FIELD),
        (_raw(code=5, fields={"e": [], "r": "yes", "j": False}), GossipReason.BAD_FIELD),
        (
            _raw(code=5, fields={"e": [], "d": [[b"\x01" * 16, 0, 0, 0, 0, 0]], "r": True, "j": False}),
            GossipReason.BAD_FIELD,
        ),
        (_raw(code=2, fields={"s": 1, "to": b"\x02" * 16, "addr": [1], "nack": True}), GossipReason.BAD_FIELD),
    ],
)
def test_message_refusals_are_typed(data, reason):
    with pytest.raises(GossipError) as e:
        m.decode(data, **LIMITS)
    assert e.value.reason is reason


def test_oversize_is_refused_before_parsing():
    # Not msgpack at all: if it were parsed first, the reason would be MALFORMED.
    with pytest.raises(GossipError) as e:
        m.decode(b"\xc1" * 2000, max_bytes=1000, max_news=8, max_entries=8)
    assert e.value.reason is GossipReason.OVERSIZE


def test_sync_entry_count_is_bounded(auth):
    rec = auth.record(auth.new_identity())
    sync = m.Sync(tuple(m.SyncEntry(Status.ALIVE, 0, rec) for _ in range(5)), None, reply=False, join=False)
    with pytest.raises(GossipError):
        m.decode(m.encode(sync), max_bytes=1 << 20, max_news=8, max_entries=4)


def test_unknown_news_kinds_fields_and_trailing_elements_are_tolerated():
    data = _raw(1, 1, {"s": 7, "future": [1, 2]}, [[7, "from a newer peer"]], "trailing")
    body, news = m.decode(data, **LIMITS)
    assert body == m.Ack(7) and news == []


def test_every_truncation_and_byte_flip_is_a_gossip_error_or_a_message(auth):
    bodies, news = _samples(auth)
    data = m.encode(bodies[5], [m.pack_news(n) for n in news])
    for cut in range(len(data)):
        with pytest.raises(GossipError):
            m.decode(data[:cut], **LIMITS)
    rng = random.Random(3)
    for _ in range(2000):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            m.decode(bytes(b), **LIMITS)
        except GossipError:
            pass
