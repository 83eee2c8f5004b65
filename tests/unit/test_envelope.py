"""Envelope round trip and every refusal, in the order the checks run. No sockets, no sleeping."""

import msgpack
import pytest

from mesh.config import RpcConfig
from mesh.errors import EnvelopeRejected
from mesh.identity.keys import Identity
from mesh.rpc import envelope
from mesh.rpc.envelope import HEADER_BYTES, RejectReason
from mesh.testing import ManualClock
from support.builders import pair


@pytest.fixture
def sides():
    clock = ManualClock()
    a, b = pair(clock=clock)
    return a, b, clock


def rejected(codec, frame) -> RejectReason:
    with pytest.raises(EnvelopeRejected) as e:
        codec.open(frame)
    return e.value.reason


def test_round_trip(sides):
    a, b, _ = sides
    frame = a.seal("call", {"m": "ask", "a": {"prompt": "hi", "n": [1, 2]}})
    env = b.open(frame)
    assert env.kind == "call" and env.sender == a.identity.peer_id
    assert env.body == {"m": "ask", "a": {"prompt": "hi", "n": [1, 2]}}
    assert env.version == 1 and len(env.nonce) == 16  # a small frame: version 1


def test_a_big_frame_is_signed_over_its_digest_and_every_byte_still_counts(sides):
    a, b, _ = sides
    blob = bytes(range(256)) * 1024  # 256 KiB: above PREHASH_ABOVE
    frame = a.seal("chunk", {"re": bytes(16), "seq": 0, "d": {"d": blob}})
    assert frame[4] == 2 == envelope.PROTOCOL_VERSION
    assert b.open(frame).body["d"]["d"] == blob
    for i in [5, 21, envelope.HEADER_BYTES, len(frame) // 2, len(frame) - 1]:
        bad = bytearray(frame)
        bad[i] ^= 1
        assert rejected(b, bytes(bad)) in (RejectReason.BAD_SIGNATURE, RejectReason.UNKNOWN_SENDER)
    # a version-2 signature does not pass as version 1 (domain tags differ)
    as_v1 = bytearray(frame)
    as_v1[4] = 1
    assert rejected(b, bytes(as_v1)) is RejectReason.BAD_SIGNATURE


def test_every_byte_is_signed(sides):
    a, b, _ = sides
    frame = a.seal("call", {"m": "ask", "a": {}})
    for i in [0, 4, 5, 20, 21, 84, HEADER_BYTES, len(frame) - 1]:
        tampered = bytearray(frame)
        tampered[i] ^= 0x01
        reason = rejected(b, bytes(tampered))
        assert reason in {
            RejectReason.BAD_SIGNATURE,
            RejectReason.MALFORMED,
            RejectReason.BAD_VERSION,
            RejectReason.UNKNOWN_SENDER,
        }, (i, reason)
    # the untouched frame is still good
    assert b.open(frame).kind == "call"
    assert b.rejections.total == 8


def test_wrong_key_is_bad_signature(sides):
    a, b, _ = sides
    frame = bytearray(a.seal("call", {"m": "x", "a": {}}))
    mallory = Identity.generate()
    # keep a's sender id in the header but sign with another key
    payload = bytes(frame[HEADER_BYTES:])
    frame[21:HEADER_BYTES] = mallory.sign(envelope.DOMAIN + bytes(frame[:21]) + payload)
    assert rejected(b, bytes(frame)) is RejectReason.BAD_SIGNATURE


def test_unknown_sender(sides):
    _, b, clock = sides
    stranger, _ = pair(clock=clock)
    assert rejected(b, stranger.seal("call", {"m": "x", "a": {}})) is RejectReason.UNKNOWN_SENDER


def test_replay_is_refused_once_seen(sides):
    a, b, _ = sides
    frame = a.seal("call", {"m": "x", "a": {}})
    b.open(frame)
    assert rejected(b, frame) is RejectReason.REPLAY
    assert b.rejections.snapshot()["replay"] == 1


def test_old_and_future_timestamps(sides):
    a, b, clock = sides
    old = a.seal("call", {"m": "x", "a": {}})
    clock.advance(31)
    assert rejected(b, old) is RejectReason.STALE_TIMESTAMP
    future = a.seal("call", {"m": "x", "a": {}})
    clock.now -= 62
    assert rejected(b, future) is RejectReason.STALE_TIMESTAMP


def test_replay_window_forgets_only_after_timestamps_are_stale(sides):
    a, b, clock = sides
    frame = a.seal("call", {"m": "x", "a": {}})
    b.open(frame)
    clock.advance(29)
    assert rejected(b, frame) is RejectReason.REPLAY
    clock.advance(10)
    assert rejected(b, frame) is RejectReason.STALE_TIMESTAMP
    b.open(a.seal("call", {"m": "x", "a": {}}))
    assert len(b.replay) == 1  # the expired entry was pruned when the next frame came


def test_oversize_dropped_before_parsing():
    a, b = pair(RpcConfig(max_frame_bytes=1024))
    frame = a.seal("call", {"m": "x", "a": {"blob": b"\0" * 2000}})
    assert rejected(b, frame) is RejectReason.OVERSIZE


@pytest.mark.parametrize("frame", [b"", b"\x00", b"MESH", b"garbage" * 20, b"\xff" * 200])
def test_garbage(sides, frame):
    _, b, _ = sides
    assert rejected(b, frame) in {RejectReason.MALFORMED, RejectReason.BAD_VERSION}


def _signed_payload(codec, payload: bytes, version: int = 1) -> bytes:
    head = envelope.MAGIC + bytes([version]) + codec.identity.peer_id
    return head + codec.identity.sign(envelope.DOMAIN + head + payload) + payload


def _doc(codec, clock, **over):
    doc = {"v": 1, "k": "call", "id": b"i" * 16, "from": codec.identity.peer_id,
           "ts": int(clock() * 1000), "n": b"n" * 16, "b": {}}
    doc.update(over)
    return msgpack.packb(doc, use_bin_type=True)


def test_signed_but_malformed_msgpack(sides):
    a, b, _ = sides
    assert rejected(b, _signed_payload(a, b"\xc1\xc1\xc1")) is RejectReason.MALFORMED
    # a container header claiming 4 billion items in a 5-byte payload
    assert rejected(b, _signed_payload(a, b"\xdd\xff\xff\xff\xff")) is RejectReason.MALFORMED


def test_deep_nesting_refused(sides):
    a, b, clock = sides
    deep = b"\x91" * 5000 + b"\x90"  # 5000 nested one-element arrays
    reason = rejected(b, _signed_payload(a, deep))
    assert reason in {RejectReason.MALFORMED, RejectReason.BAD_FIELD}
    body = {"x": 1}
    for _ in range(40):
        body = {"x": body}
    assert rejected(b, _signed_payload(a, _doc(a, clock, b=body))) is RejectReason.BAD_FIELD


@pytest.mark.parametrize(
    "override",
    [{"v": "1"}, {"k": 3}, {"id": "x" * 16}, {"id": b"short"}, {"ts": 1.5}, {"n": None}, {"b": [1]}, {"v": True}],
)
def test_wrong_field_types(sides, override):
    a, b, clock = sides
    assert rejected(b, _signed_payload(a, _doc(a, clock, **override))) is RejectReason.BAD_FIELD


def test_payload_must_agree_with_header(sides):
    a, b, clock = sides
    other = Identity.generate()
    assert rejected(b, _signed_payload(a, _doc(a, clock, **{"from": other.peer_id}))) is RejectReason.BAD_FIELD


def test_unknown_kind_and_version(sides):
    a, b, clock = sides
    assert rejected(b, _signed_payload(a, _doc(a, clock, k="teleport"))) is RejectReason.UNKNOWN_KIND
    assert rejected(b, _signed_payload(a, _doc(a, clock, v=9), version=9)) is RejectReason.BAD_VERSION


def test_unknown_trailing_fields_tolerated(sides):
    a, b, clock = sides
    env = b.open(_signed_payload(a, _doc(a, clock, future_field={"x": 1})))
    assert env.kind == "call"


def test_counts_per_reason(sides):
    a, b, clock = sides
    frame = a.seal("call", {"m": "x", "a": {}})
    b.open(frame)
    for _ in range(3):
        rejected(b, frame)
    rejected(b, b"junk")
    snap = b.rejections.snapshot()
    assert snap["replay"] == 3 and snap["malformed"] == 1 and set(snap) == {r.value for r in RejectReason}
