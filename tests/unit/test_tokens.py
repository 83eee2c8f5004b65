"""Join tokens, the inviter's invite store, and enrolment end to end (without sockets)."""

import base64
import fcntl
import os
import random
import stat
import threading

import msgpack
import pytest

from mesh.errors import CertificateError, IdentityError, TokenError
from mesh.identity.authority import MeshAuthority
from mesh.identity.certificate import verify_certificate
from mesh.identity.enrolment import accept_enrolment, create_invite, enrol_request, handle_enrol
from mesh.identity.invites import ENROL_WINDOW_S, InviteStore
from mesh.identity.keys import Identity
from mesh.identity.tokens import (
    MAX_TOKEN_CHARS,
    PREFIX,
    JoinToken,
    enrol_proof,
    invite_id_for,
    parse_token,
)

NOW = 1_800_000_000
ENDPOINTS = ["tcp://192.168.1.20:7411", "tcp://[fe80::1]:7411"]


@pytest.fixture
def mesh(tmp_path):
    """An inviting peer: its authority, its identity, and its invite store."""
    authority = MeshAuthority(Identity.generate())
    inviter = Identity.generate()
    store = InviteStore(tmp_path / "invites.json")
    return authority, inviter, store


INVITER_CURVE = bytes(range(32))


def new_token(mesh, *, now=NOW, ttl_s=900, endpoints=ENDPOINTS) -> JoinToken:
    authority, inviter, store = mesh
    return create_invite(
        store=store,
        authority=authority,
        inviter_public_raw=inviter.public_raw,
        endpoints=endpoints,
        now=now,
        ttl_s=ttl_s,
        inviter_curve=INVITER_CURVE,
    )


def encode(elements) -> str:
    body = base64.b32encode(msgpack.packb(elements, use_bin_type=True)).decode().rstrip("=").lower()
    return PREFIX + body


def elements(token: JoinToken) -> list:
    return [
        token.version,
        token.mesh_id,
        token.authority_public,
        token.inviter_public,
        list(token.endpoints),
        token.secret,
        token.expires_at,
        token.inviter_curve,
    ]


# -- the token ---------------------------------------------------------------------


def test_token_round_trip(mesh):
    authority, inviter, _ = mesh
    token = new_token(mesh)
    text = token.to_text()
    assert text.startswith("mesh1-") and text == text.lower() and "=" not in text and len(text) < 400
    back = parse_token(text, now=NOW)
    assert back == token
    assert back.mesh_id == authority.mesh_id and back.authority_public == authority.public_raw
    assert back.inviter_public == inviter.public_raw and back.endpoints == tuple(ENDPOINTS)
    assert back.expires_at == NOW + 900 and len(back.secret) == 16
    assert parse_token("  " + text.upper() + "\n", now=NOW) == token  # pasted with case or whitespace changes


def test_expired_token(mesh):
    text = new_token(mesh).to_text()
    parse_token(text, now=NOW + 899)
    with pytest.raises(TokenError, match="expired"):
        parse_token(text, now=NOW + 900)


def test_appended_elements_are_tolerated(mesh):
    token = new_token(mesh)
    assert JoinToken.from_text(encode(elements(token) + ["future", {"x": 1}])) == token


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "starts with"),
        ("mesh2-aaaa", "starts with"),
        ("mesh1-!!!!", "not base32"),
        ("mesh1-" + "a" * (MAX_TOKEN_CHARS + 1), "more than"),
        ("mesh1-aaaaaaaa", "bad encoding"),
        (encode({"a": 1}), "not a token array"),
        (encode([1, 2, 3]), "not a token array"),
        (b"mesh1-bytes", "not text"),
    ],
)
def test_malformed_token_text(text, message):
    with pytest.raises(TokenError, match=message):
        JoinToken.from_text(text)


@pytest.mark.parametrize(
    "index, value, message",
    [
        (0, "1", "version"),
        (0, True, "version"),
        (0, 9, "unsupported token version"),
        (1, b"m" * 16, "mesh id does not match"),
        (1, b"m" * 15, "mesh id must be 16"),
        (2, "key", "authority key must be 32"),
        (3, b"k" * 33, "inviter key must be 32"),
        (4, "tcp://x:1", "endpoints"),
        (4, ["tcp://a:1"] * 5, "at most 4"),
        (4, ["udp://a:1"], "must start with tcp://"),
        (4, ["tcp://a"], "host:port"),
        (4, ["tcp://a:99999"], "host:port"),
        (4, ["tcp://a b:1"], "characters"),
        (4, ["tcp://" + "a" * 100 + ":1"], "at most 100"),
        (4, [7], "endpoint is a string"),
        (5, b"s" * 8, "secret must be 16"),
        (6, "soon", "bad expiry"),
        (6, -1, "bad expiry"),
    ],
)
def test_malformed_token_fields(mesh, index, value, message):
    doc = elements(new_token(mesh))
    doc[index] = value
    with pytest.raises(TokenError, match=message):
        JoinToken.from_text(encode(doc))


def test_random_damage_raises_only_token_error(mesh):
    text = new_token(mesh).to_text()
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567!-="
    for _ in range(500):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(PREFIX), len(chars))] = rng.choice(alphabet)
        damaged = "".join(chars[: rng.randint(len(PREFIX), len(chars))])
        try:
            JoinToken.from_text(damaged)
        except TokenError:
            pass  # anything else fails the test


def test_invite_id_and_proof_are_domain_separated_and_bound_to_the_request():
    secret, joiner = b"s" * 16, Identity.generate().public_raw
    proof = enrol_proof(secret, joiner_public_raw=joiner, name="desk", ts=NOW)
    assert len(invite_id_for(secret)) == 16 and invite_id_for(secret) != proof[:16]
    variants = [
        enrol_proof(b"t" * 16, joiner_public_raw=joiner, name="desk", ts=NOW),
        enrol_proof(secret, joiner_public_raw=Identity.generate().public_raw, name="desk", ts=NOW),
        enrol_proof(secret, joiner_public_raw=joiner, name="desk2", ts=NOW),
        enrol_proof(secret, joiner_public_raw=joiner, name="desk", ts=NOW + 1),
        enrol_proof(secret, joiner_public_raw=joiner, name="desk", ts=NOW, curve_public=b"c" * 32),
    ]
    assert proof not in variants and len(set(variants)) == len(variants)


# -- the invite store --------------------------------------------------------------


def redeem_args(token: JoinToken, joiner: Identity, *, name="desk", ts=NOW, curve=b""):
    proof = enrol_proof(token.secret, joiner_public_raw=joiner.public_raw, name=name, ts=ts, curve_public=curve)
    return token.invite_id, proof, joiner.public_raw, name, ts


def test_invite_redeems_once(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    assert store.open_count(now=NOW) == 1
    store.redeem(*redeem_args(token, joiner), now=NOW + 10)
    assert store.open_count(now=NOW) == 0
    with pytest.raises(TokenError, match="already used"):
        store.redeem(*redeem_args(token, joiner), now=NOW + 11)
    with pytest.raises(TokenError, match="already used"):
        store.redeem(*redeem_args(token, Identity.generate()), now=NOW + 11)


def test_store_file_is_private_and_holds_the_use(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.redeem(*redeem_args(token, joiner), now=NOW)
    # a fresh store object (another process) sees the invite as used
    with pytest.raises(TokenError, match="already used"):
        InviteStore(store.path).redeem(*redeem_args(token, joiner), now=NOW)


def test_wrong_proof_is_refused_and_does_not_spend_the_invite(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    invite_id, proof, public, name, ts = redeem_args(token, joiner)
    with pytest.raises(TokenError, match="bad proof"):
        store.redeem(invite_id, bytes(32), public, name, ts, now=NOW)
    with pytest.raises(TokenError, match="bad proof"):
        store.redeem(invite_id, proof, public, "other-name", ts, now=NOW)
    store.redeem(invite_id, proof, public, name, ts, now=NOW)  # still usable by its holder


def test_sniffed_proof_cannot_enrol_another_key(mesh):
    _, _, store = mesh
    token, joiner, attacker = new_token(mesh), Identity.generate(), Identity.generate()
    invite_id, proof, _, name, ts = redeem_args(token, joiner)
    with pytest.raises(TokenError, match="bad proof"):
        store.redeem(invite_id, proof, attacker.public_raw, name, ts, now=NOW)
    with pytest.raises(TokenError, match="bad proof"):  # nor swap in its own transport key
        store.redeem(invite_id, proof, joiner.public_raw, name, ts, now=NOW, curve_public=b"c" * 32)
    with_curve = redeem_args(token, joiner, curve=b"j" * 32)
    with pytest.raises(TokenError, match="bad proof"):
        store.redeem(*with_curve, now=NOW, curve_public=b"x" * 32)
    store.redeem(*with_curve, now=NOW, curve_public=b"j" * 32)


def test_expired_and_unknown_invites(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh, ttl_s=60), Identity.generate()
    with pytest.raises(TokenError, match="expired"):
        store.redeem(*redeem_args(token, joiner, ts=NOW + 60), now=NOW + 60)
    with pytest.raises(TokenError, match="unknown invite"):
        store.redeem(bytes(16), bytes(32), joiner.public_raw, "desk", NOW, now=NOW)
    new_token(mesh, now=NOW + 61)  # every write prunes expired invites
    with pytest.raises(TokenError, match="unknown invite"):
        store.redeem(*redeem_args(token, joiner, ts=NOW + 62), now=NOW + 62)


def test_request_time_window(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    for ts in (NOW - ENROL_WINDOW_S - 1, NOW + ENROL_WINDOW_S + 1):
        with pytest.raises(TokenError, match="check the clocks"):
            store.redeem(*redeem_args(token, joiner, ts=ts), now=NOW)
    store.redeem(*redeem_args(token, joiner, ts=NOW + ENROL_WINDOW_S), now=NOW)


def test_wrong_types_in_redeem_are_token_errors(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    invite_id, proof, public, name, ts = redeem_args(token, joiner)
    for bad in [
        (None, proof, public, name, ts),
        (invite_id, proof, public, 5, ts),
        (invite_id, proof, public, name, "1"),
    ]:
        with pytest.raises(TokenError, match="malformed"):
            store.redeem(*bad, now=NOW)


def test_open_invites_are_bounded(tmp_path):
    store = InviteStore(tmp_path / "invites.json", max_invites=3)
    for _ in range(3):
        store.create(now=NOW, ttl_s=60)
    with pytest.raises(TokenError, match="3 invites are open"):
        store.create(now=NOW, ttl_s=60)
    store.create(now=NOW + 60, ttl_s=60)  # the first three expired and were pruned
    with pytest.raises(TokenError):
        store.create(now=NOW, ttl_s=0)


def test_store_file_problems(mesh):
    _, _, store = mesh
    new_token(mesh)
    os.chmod(store.path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        store.create(now=NOW)
    os.chmod(store.path, 0o600)
    store.path.write_text('{"version": 1, "invites": {"zz": {}}}')
    with pytest.raises(IdentityError, match="corrupt"):
        store.create(now=NOW)
    store.path.write_text("[")
    with pytest.raises(IdentityError, match="corrupt"):
        store.open_count(now=NOW)


def test_redeem_waits_for_the_file_lock(mesh):
    _, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    fd = os.open(store.lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is in the middle of a write
    done = threading.Event()
    errors = []

    def redeem():
        try:
            store.redeem(*redeem_args(token, joiner), now=NOW)
        except Exception as e:  # reported below
            errors.append(e)
        done.set()

    t = threading.Thread(target=redeem)
    t.start()
    assert not done.wait(0.2)
    os.close(fd)  # releases the lock
    assert done.wait(5) and not errors
    t.join()


def test_racing_redemptions_succeed_once(mesh):
    _, _, store = mesh
    token = new_token(mesh)
    joiners = [Identity.generate() for _ in range(8)]
    barrier = threading.Barrier(len(joiners))
    outcomes = []

    def redeem(j):
        s = InviteStore(store.path)  # each its own store, as separate processes would be
        barrier.wait()
        try:
            s.redeem(*redeem_args(token, j), now=NOW)
            outcomes.append("ok")
        except TokenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem, args=(j,)) for j in joiners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


# -- enrolment ---------------------------------------------------------------------


def test_enrolment_end_to_end(mesh):
    authority, _, store = mesh
    text = new_token(mesh).to_text()
    joiner = Identity.generate()
    args = enrol_request(text, joiner, "desk", now=NOW + 5)
    assert set(args) >= {"invite_id", "proof", "public_key", "name", "ts"}
    token = parse_token(text, now=NOW)
    assert all(token.secret not in v for v in args.values() if isinstance(v, bytes))  # the secret never travels
    reply = handle_enrol(args, store=store, authority=authority, now=NOW + 6, sender=joiner.peer_id)
    assert reply["authority_public"] == authority.public_raw and reply["mesh_id"] == authority.mesh_id
    m = accept_enrolment(reply, token=token, joiner_public_raw=joiner.public_raw, now=NOW + 7)
    assert m.mesh_id == authority.mesh_id and m.name == "desk" and m.seeds == tuple(ENDPOINTS)
    cert = verify_certificate(m.certificate, authority_public_raw=authority.public_raw, now=NOW + 7)
    assert cert.peer_id == joiner.peer_id
    with pytest.raises(TokenError, match="already used"):
        handle_enrol(args, store=store, authority=authority, now=NOW + 8)


def test_enrol_request_refuses_before_sending(mesh):
    token, joiner = new_token(mesh), Identity.generate()
    with pytest.raises(TokenError, match="expired"):
        enrol_request(token, joiner, "desk", now=NOW + 900)
    with pytest.raises(TokenError, match="expired"):
        enrol_request(token.to_text(), joiner, "desk", now=NOW + 900)
    with pytest.raises(TokenError, match="printable"):
        enrol_request(token, joiner, "desk\x00", now=NOW)
    with pytest.raises(TokenError, match="32 bytes"):
        enrol_request(token, joiner, "desk", now=NOW, curve_public=b"c")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"invite_id": b"i" * 15}, "'invite_id' must be 16 bytes"),
        ({"invite_id": "text"}, "'invite_id' must be 16 bytes"),
        ({"proof": None}, "'proof' must be 32 bytes"),
        ({"public_key": b"k" * 33}, "'public_key' must be 32 bytes"),
        ({"curve_public": b"c" * 31}, "'curve_public' must be 0 or 32 bytes"),
        ({"name": 5}, "must be a string"),
        ({"name": "x" * 65}, "1..64 characters"),
        ({"ts": 1.5}, "'ts' must be an int"),
        ({"ts": True}, "'ts' must be an int"),
    ],
)
def test_handle_enrol_validates_args_without_spending_the_invite(mesh, change, message):
    authority, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    args = enrol_request(token, joiner, "desk", now=NOW)
    with pytest.raises(TokenError, match=message):
        handle_enrol(args | change, store=store, authority=authority, now=NOW)
    handle_enrol(args, store=store, authority=authority, now=NOW)  # the invite was not spent


def test_handle_enrol_refuses_non_maps_and_foreign_senders(mesh):
    authority, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    with pytest.raises(TokenError, match="must be a map"):
        handle_enrol([1, 2], store=store, authority=authority, now=NOW)
    args = enrol_request(token, joiner, "desk", now=NOW)
    with pytest.raises(TokenError, match="not signed by the key it enrols"):
        handle_enrol(args, store=store, authority=authority, now=NOW, sender=Identity.generate().peer_id)
    args["extra-future-field"] = 1  # tolerated
    handle_enrol(args, store=store, authority=authority, now=NOW, sender=joiner.peer_id)


def test_curve_key_is_carried_into_the_certificate(mesh):
    authority, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    args = enrol_request(token, joiner, "desk", now=NOW, curve_public=b"c" * 32)
    reply = handle_enrol(args, store=store, authority=authority, now=NOW)
    m = accept_enrolment(reply, token=token, joiner_public_raw=joiner.public_raw, now=NOW, curve_public=b"c" * 32)
    assert (
        verify_certificate(m.certificate, authority_public_raw=authority.public_raw, now=NOW).curve_public == b"c" * 32
    )


def test_joiner_refuses_a_reply_the_token_does_not_vouch_for(mesh, tmp_path):
    authority, _, store = mesh
    token, joiner = new_token(mesh), Identity.generate()
    reply = handle_enrol(enrol_request(token, joiner, "desk", now=NOW), store=store, authority=authority, now=NOW)
    # another mesh answering (a look-alike inviter)
    rogue = MeshAuthority(Identity.generate())
    rogue_reply = {
        "certificate": rogue.issue(joiner.public_raw, "desk", now=NOW),
        "authority_public": rogue.public_raw,
        "mesh_id": rogue.mesh_id,
    }
    with pytest.raises(TokenError, match="another mesh"):
        accept_enrolment(rogue_reply, token=token, joiner_public_raw=joiner.public_raw, now=NOW)
    # right mesh named, but a certificate signed by someone else
    forged = reply | {"certificate": rogue_reply["certificate"]}
    with pytest.raises(CertificateError):
        accept_enrolment(forged, token=token, joiner_public_raw=joiner.public_raw, now=NOW)
    # a genuine certificate, but for another device's key
    with pytest.raises(CertificateError, match="not for this device"):
        accept_enrolment(reply, token=token, joiner_public_raw=Identity.generate().public_raw, now=NOW)
    with pytest.raises(TokenError, match="malformed"):
        accept_enrolment({"certificate": "x"}, token=token, joiner_public_raw=joiner.public_raw, now=NOW)


def test_create_invite_checks_endpoints_before_opening_an_invite(mesh):
    _, _, store = mesh
    with pytest.raises(TokenError, match="tcp://"):
        new_token(mesh, endpoints=["http://x:1"])
    with pytest.raises(TokenError, match="at most 4"):
        new_token(mesh, endpoints=["tcp://a:1"] * 5)
    assert store.open_count(now=NOW) == 0
    assert new_token(mesh, endpoints=[]).endpoints == ()


def test_enrolment_certifies_only_the_transport_key_the_connection_presents(mesh):
    authority, _, store = mesh
    token = new_token(mesh)
    assert JoinToken.from_text(token.to_text()).inviter_curve == INVITER_CURVE
    joiner = Identity.generate()
    mine, other = b"m" * 32, b"o" * 32
    args = enrol_request(token, joiner, "desk", now=NOW, curve_public=mine)
    with pytest.raises(TokenError, match="transport key"):  # a relay that holds another key
        handle_enrol(args, store=store, authority=authority, now=NOW, sender=joiner.peer_id, transport_key=other)
    reply = handle_enrol(args, store=store, authority=authority, now=NOW, sender=joiner.peer_id, transport_key=mine)
    m = accept_enrolment(reply, token=token, joiner_public_raw=joiner.public_raw, now=NOW, curve_public=mine)
    assert verify_certificate(m.certificate, authority_public_raw=authority.public_raw, now=NOW).curve_public == mine


def test_a_token_of_an_older_build_has_no_transport_key(mesh):
    token = new_token(mesh)
    older = encode(elements(token)[:7])
    assert JoinToken.from_text(older).inviter_curve == b""
    with pytest.raises(TokenError, match="transport key"):
        JoinToken.from_text(encode(elements(token)[:7] + [b"short"]))
