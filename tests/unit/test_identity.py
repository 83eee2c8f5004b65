import os
import stat

import pytest

from mesh.errors import IdentityError
from mesh.identity.keys import Identity, peer_id_from_public, peer_id_from_text, peer_id_text
from mesh.identity.trust import TrustStore, parse_trust_file


def test_create_then_load_same_identity(tmp_path):
    path = tmp_path / "identity.key"
    a, created = Identity.load_or_create(path)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    b, created = Identity.load_or_create(path)
    assert not created and b.peer_id == a.peer_id


def test_peer_id_is_derived_from_the_key():
    ident = Identity.generate()
    assert ident.peer_id == peer_id_from_public(ident.public_raw) and len(ident.peer_id) == 16
    assert len(ident.peer_id_text) == 26 and peer_id_from_text(ident.peer_id_text) == ident.peer_id
    assert peer_id_text(Identity.generate().peer_id) != ident.peer_id_text
    with pytest.raises(IdentityError):
        peer_id_from_text("not-an-id")


def test_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "identity.key"
    Identity.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


def test_garbage_key_file_is_a_clear_error(tmp_path):
    path = tmp_path / "identity.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="cannot read key"):
        Identity.load(path)


def test_trust_store_add_and_reload_from_another_writer(tmp_path):
    own = Identity.generate()
    other = Identity.generate()
    store = TrustStore(tmp_path / "trusted_keys", own_public_raw=own.public_raw)
    assert store.key_for(own.peer_id) is not None
    assert store.key_for(other.peer_id) is None
    # another process (the CLI) enrols a key: the running store sees it without restart
    TrustStore(tmp_path / "trusted_keys").add(other.public_raw, "laptop")
    assert store.key_for(other.peer_id) is not None
    assert not store.add(other.public_raw, "again")  # already there
    assert stat.S_IMODE((tmp_path / "trusted_keys").stat().st_mode) == 0o600


def test_trust_file_errors_name_the_line():
    with pytest.raises(IdentityError, match=":2:"):
        parse_trust_file("# comment\nnot-base64!! name\n")
    with pytest.raises(IdentityError, match="32 bytes"):
        parse_trust_file("AAAA short\n")
