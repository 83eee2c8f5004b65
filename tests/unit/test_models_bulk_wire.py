"""The bulk piece stream's rules (mesh.models.bulk_wire): key agreement, frames, grants.
Pure: no sockets, the clock injected."""

from __future__ import annotations

import pytest

from mesh.models import bulk_wire as w

SHA = bytes(range(32))
PULLER, SOURCE = b"p" * 20, b"s" * 20
TICKET = b"t" * w.TICKET_BYTES


def _pair(**over):
    a, a_pub = w.new_key_pair()
    b, b_pub = w.new_key_pair()
    args = dict(ticket=TICKET, sha256=SHA, puller=PULLER, source=SOURCE)
    puller = w.derive_keys(a, b_pub, **args)
    source = w.derive_keys(b, a_pub, **{**args, **over})
    return puller, source


def test_both_ends_derive_the_same_keys_one_per_direction():
    puller, source = _pair()
    assert puller == source
    assert puller.to_source != puller.to_puller and len(puller.to_source) == 32


@pytest.mark.parametrize("field", ["ticket", "sha256", "puller", "source"])
def test_keys_are_bound_to_the_ticket_the_model_and_both_members(field):
    other = {"ticket": b"u" * w.TICKET_BYTES, "sha256": bytes(32), "puller": b"x" * 20, "source": b"y" * 20}
    puller, source = _pair(**{field: other[field]})
    assert puller != source


def test_a_key_that_is_not_an_x25519_public_key_is_refused():
    private, _ = w.new_key_pair()
    with pytest.raises(w.BulkStreamError) as e:
        w.derive_keys(private, b"short", ticket=TICKET, sha256=SHA, puller=PULLER, source=SOURCE)
    assert e.value.reason == "bad_key"
    with pytest.raises(w.BulkStreamError) as e:  # a low-order point: the shared secret would be zero
        w.derive_keys(private, bytes(32), ticket=TICKET, sha256=SHA, puller=PULLER, source=SOURCE)
    assert e.value.reason == "bad_key"


def _link(limits=None):
    keys, _ = _pair()
    return w.Sealer(keys.to_puller), w.Opener(keys.to_puller, limits or {w.PIECE: 1024, w.NO: w.MAX_REASON})


def test_frames_open_in_order_and_say_their_kind():
    sealer, opener = _link()
    for payload in (b"a" * 1024, b"", b"xyz"):
        header, sealed = sealer.seal(w.PIECE, payload)
        kind, n = opener.header(header)
        assert (kind, n) == (w.PIECE, len(payload) + w.TAG_BYTES) and len(sealed) == n
        assert opener.open(header, sealed) == payload


def test_frames_sealed_and_opened_in_place_match_the_copying_ones():
    sealer, opener = _link()
    out, into = bytearray(1024 + w.TAG_BYTES), bytearray(1024)
    for payload in (b"b" * 1024, b"xyz"):
        header, sealed = sealer.seal_into(w.PIECE, payload, out)
        assert len(sealed) == len(payload) + w.TAG_BYTES
        got = opener.open(header, bytes(sealed), into)
        assert isinstance(got, memoryview) and bytes(got) == payload and into[:len(payload)] == payload
    header, sealed = sealer.seal_into(w.PIECE, b"c" * 10, out)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(w.BulkStreamError) as e:  # the tag is checked in place too
        opener.open(header, flipped, into)
    assert e.value.reason == "bad_tag"


def test_a_tampered_replayed_or_reordered_frame_fails_its_tag():
    sealer, opener = _link()
    h1, s1 = sealer.seal(w.PIECE, b"first")
    h2, s2 = sealer.seal(w.PIECE, b"second")
    flipped = bytearray(s1)
    flipped[0] ^= 1
    for header, sealed in ((h1, bytes(flipped)), (h2, s2)):  # tampered; out of order
        with pytest.raises(w.BulkStreamError) as e:
            opener.open(header, sealed)
        assert e.value.reason == "bad_tag"
    assert opener.open(h1, s1) == b"first"
    with pytest.raises(w.BulkStreamError):  # replayed
        opener.open(h1, s1)
    assert opener.open(h2, s2) == b"second"


def test_the_header_is_authenticated_a_kind_changed_in_transit_fails():
    sealer, opener = _link()
    header, sealed = sealer.seal(w.PIECE, b"reason?")
    forged = w.HEADER.pack(len(sealed), w.NO)
    with pytest.raises(w.BulkStreamError, match="tag"):
        opener.open(forged, sealed)


def test_the_other_directions_key_does_not_open_a_frame():
    keys, _ = _pair()
    header, sealed = w.Sealer(keys.to_source).seal(w.PIECE, b"x")
    with pytest.raises(w.BulkStreamError, match="tag"):
        w.Opener(keys.to_puller, {w.PIECE: 10}).open(header, sealed)


@pytest.mark.parametrize("kind, length, reason", [
    (w.GET, 20, "bad_kind"),  # a source's frame kinds only
    (9, 20, "bad_kind"),
    (w.PIECE, 1024 + w.TAG_BYTES + 1, "too_long"),
    (w.PIECE, w.TAG_BYTES - 1, "too_long"),
    (w.NO, w.MAX_REASON + w.TAG_BYTES + 1, "too_long"),
])
def test_a_header_breaking_the_limits_is_refused_before_reading_the_frame(kind, length, reason):
    _, opener = _link()
    with pytest.raises(w.BulkStreamError) as e:
        opener.header(w.HEADER.pack(length, kind))
    assert e.value.reason == reason


def test_a_get_names_one_piece_of_the_model():
    assert w.parse_get(w.get_frame(3), pieces=4) == 3
    for bad, reason in ((w.get_frame(4), "bad_index"), (b"\x00" * 3, "bad_get"), (b"\x00" * 5, "bad_get")):
        with pytest.raises(w.BulkStreamError) as e:
            w.parse_get(bad, pieces=4)
        assert e.value.reason == reason


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _grants(**kw):
    clock = _Clock()
    counter = iter(range(1000))
    grants = w.BulkGrants(clock, token=lambda n: next(counter).to_bytes(n, "big"), **kw)
    keys, _ = _pair()
    return clock, grants, keys


def _add(grants, keys, peer=PULLER):
    return grants.add(grants.ticket(), peer, "ab" * 32, keys, path="/m", size=10, piece_size=4)


def test_a_ticket_is_taken_once():
    _, grants, keys = _grants()
    g = _add(grants, keys)
    assert (g.pieces, g.piece_range(2)) == (3, (8, 2))
    assert grants.take(g.ticket) == g
    assert grants.take(g.ticket) is None
    assert grants.take(b"?" * w.TICKET_BYTES) is None


def test_a_ticket_not_used_in_time_is_gone():
    clock, grants, keys = _grants(ttl_s=10)
    g = _add(grants, keys)
    clock.t += 9.9
    assert len(grants) == 1
    clock.t += 0.1
    assert grants.take(g.ticket) is None and len(grants) == 0


def test_tickets_are_bounded_per_member_and_in_all():
    clock, grants, keys = _grants(per_peer=2, max_grants=3)
    _add(grants, keys)
    _add(grants, keys)
    with pytest.raises(w.BulkStreamError) as e:
        _add(grants, keys)
    assert e.value.reason == "too_many"
    _add(grants, keys, peer=b"q" * 20)
    with pytest.raises(w.BulkStreamError):
        _add(grants, keys, peer=b"r" * 20)
    clock.t += w.GRANT_TTL_S  # expired ones make room again
    _add(grants, keys)
