"""The tunnel's frame rules and grants (mesh.rpc.tunnel_wire): pure, no sockets."""

from __future__ import annotations

import itertools

import pytest

from mesh.rpc import tunnel_wire as w

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def test_each_kind_parses_with_the_payload_it_allows():
    assert w.parse([w.OPEN, b"t" * w.TOKEN_BYTES]) == w.TunnelFrame(w.OPEN, b"t" * 32)
    assert w.parse([w.DATA, b"x"]).payload == b"x"
    assert w.parse([w.CLOSE, b""]).kind == w.CLOSE
    assert w.parse([w.REFUSED, b"why"]).payload == b"why"


@pytest.mark.parametrize("frames, reason", [
    ([w.DATA], "bad_shape"),
    ([w.DATA, b"x", b"y"], "bad_shape"),
    ([b"Z", b""], "unknown_kind"),
    ([w.OPEN, b"short"], "bad_open"),
    ([w.DATA, b""], "bad_data"),
    ([w.DATA, b"x" * (w.MAX_DATA + 1)], "bad_data"),
    ([w.PING, b"x"], "bad_control"),
    ([w.REFUSED, b"x" * (w.MAX_REASON + 1)], "bad_refusal"),
])
def test_a_broken_frame_is_refused_with_its_reason(frames, reason):
    with pytest.raises(w.TunnelFrameError) as e:
        w.parse(frames)
    assert e.value.reason == reason


def _grants() -> w.Grants:
    n = itertools.count(1)
    return w.Grants(token_bytes=lambda: next(n).to_bytes(w.TOKEN_BYTES, "big"))


def test_a_grant_opens_only_for_the_key_it_names_and_only_while_live():
    g = _grants()
    grant = g.grant(KEY_A, "peer-a", 100, expires_at=10.0)
    assert g.check(grant.token, KEY_A, now=5.0) is grant
    assert g.check(grant.token, KEY_B, now=5.0) is None  # another member's connection
    assert g.check(grant.token, None, now=5.0) is None  # a connection with no key
    assert g.check(b"\x00" * 32, KEY_A, now=5.0) is None  # a token nobody was given
    assert g.reserved(now=5.0) == 100
    assert g.check(grant.token, KEY_A, now=10.0) is None  # expired
    assert g.reserved(now=10.0) == 0


def test_revoking_a_key_drops_its_grants_and_no_other():
    g = _grants()
    a1, a2 = g.grant(KEY_A, "a", 1), g.grant(KEY_A, "a", 2)
    b = g.grant(KEY_B, "b", 3)
    assert {x.token for x in g.revoke_key(KEY_A)} == {a1.token, a2.token}
    assert g.check(a1.token, KEY_A, 0) is None and g.check(b.token, KEY_B, 0) is b
    assert g.release(b.token) is b and g.reserved(0) == 0
