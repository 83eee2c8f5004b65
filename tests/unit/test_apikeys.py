"""mesh.http.apikeys: keys are shown once, kept only as hashes, revocable, and re-read by a
running store when another process (the CLI) changes the file."""

import json
import os
import stat

import pytest

from mesh.errors import ConfigError, IdentityError, InvalidRequest
from mesh.http.apikeys import KEY_PREFIX, ApiKeyStore, key_digest
from mesh.testing.clock import ManualClock


def test_create_verify_and_list(tmp_path):
    clock = ManualClock()
    store = ApiKeyStore(tmp_path / "api_keys.json", clock=clock)
    key, token = store.create("ci bot")
    assert token.startswith(KEY_PREFIX) and len(token) >= 40
    assert store.verify(token)
    assert not store.verify(token + "x") and not store.verify("nope") and not store.verify(KEY_PREFIX)
    [listed] = store.entries()
    assert listed.id == key.id and listed.name == "ci bot" and listed.created == clock.now and not listed.revoked
    assert set(listed.public()) == {"id", "name", "created", "revoked"}
    other, token2 = store.create("laptop")
    assert other.id != key.id and token2 != token
    assert store.lookup(token2).id == other.id


def test_plaintext_never_on_disk_and_file_is_private(tmp_path):
    path = tmp_path / "api_keys.json"
    store = ApiKeyStore(path)
    _, token = store.create("a")
    raw = path.read_bytes()
    secret = token[len(KEY_PREFIX):]
    assert secret.encode() not in raw and token.encode() not in raw
    assert key_digest(token).encode() in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name("api_keys.json.tmp").exists()


def test_revoke_takes_effect_on_another_store_without_restart(tmp_path):
    path = tmp_path / "api_keys.json"
    running = ApiKeyStore(path)  # the peer's store
    cli = ApiKeyStore(path)  # `mesh keys` in another process
    assert running.entries() == []
    key, token = cli.create("app")
    assert running.verify(token)  # created after the peer started: seen at once
    revoked = cli.revoke(key.id[:4])  # a unique prefix is enough
    assert revoked.revoked
    assert not running.verify(token)
    assert running.lookup(token).revoked  # known, but refused
    assert [k.revoked for k in ApiKeyStore(path).entries()] == [True]


def test_revoke_unknown_or_ambiguous_id(tmp_path):
    store = ApiKeyStore(tmp_path / "k.json")
    store.create("a")
    with pytest.raises(InvalidRequest, match="matches no key"):
        store.revoke("zzzz")
    with pytest.raises(InvalidRequest, match="matches no key"):
        store.revoke("")


def test_bad_names_refused(tmp_path):
    store = ApiKeyStore(tmp_path / "k.json")
    for name in ("", "x" * 65, "a\nb"):
        with pytest.raises(InvalidRequest):
            store.create(name)
    assert not (tmp_path / "k.json").exists()


def test_malformed_or_open_file_refused(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"version": 1, "keys": [{"id": 1}]}))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="malformed"):
        ApiKeyStore(path).verify(KEY_PREFIX + "x")
    path.write_text(json.dumps({"version": 1, "keys": []}))
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        ApiKeyStore(path).entries()
