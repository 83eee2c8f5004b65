"""The bulk piece stream's sockets (mesh.models.bulk) on loopback: a real server thread,
real connections, real AES-GCM. Pieces arrive whole and in order; a wrong ticket, a
wrong key, a bad index or too many sessions end the connection and are counted."""

from __future__ import annotations

import os
import socket
import time

import pytest

from mesh.models import bulk_wire as w
from mesh.models.bulk import BulkConnection, BulkServer

PIECE = 64 * 1024
SHA = bytes(range(32))
PULLER, SOURCE = b"p" * 20, b"s" * 20


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(os.urandom(3 * PIECE + 1000))
    return path


@pytest.fixture
def server():
    counts: dict[str, int] = {}
    s = BulkServer(grants=w.BulkGrants(time.monotonic), counts=counts, max_sessions=2, idle_s=5, handshake_s=1)
    s.start("127.0.0.1")
    yield s
    s.close()


def _ticket(server, path):
    """What models.bulk does on the source, and what the puller derives from its answer."""
    puller_private, puller_public = w.new_key_pair()
    source_private, source_public = w.new_key_pair()
    ticket = server.grants.ticket()
    args = dict(ticket=ticket, sha256=SHA, puller=PULLER, source=SOURCE)
    server.grant(PULLER, SHA.hex(), w.derive_keys(source_private, puller_public, **args), ticket,
                 path=str(path), size=path.stat().st_size, piece_size=PIECE)
    return ticket, w.derive_keys(puller_private, source_public, **args)


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _closed_by_server(sock) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_pieces_arrive_whole_over_one_connection(server, model):
    ticket, keys = _ticket(server, model)
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    data = model.read_bytes()
    try:
        for index in (0, 3, 1, 2):  # any order, the last one short
            offset = index * PIECE
            expected = data[offset:offset + PIECE]
            assert conn.get(index, len(expected)) == expected
    finally:
        conn.close()
    assert server.counts["pieces_served"] == 4 and server.counts["bulk_pieces_served"] == 4
    assert server.counts["bulk_sessions"] == 1 and server.counts["bulk_refused"] == 0
    _wait(lambda: server.sessions() == 0)


def test_a_ticket_works_once(server, model):
    ticket, keys = _ticket(server, model)
    BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5).close()
    again = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    with pytest.raises((w.BulkStreamError, OSError)):
        again.get(0, PIECE)
    again.close()
    _wait(lambda: server.counts["bulk_refused"] == 1)


def test_an_unknown_ticket_is_refused_and_counted(server, model):
    _, keys = _ticket(server, model)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"x" * w.TICKET_BYTES)
        assert _closed_by_server(s)
    _wait(lambda: server.counts["bulk_refused"] == 1)
    assert server.counts.get("bulk_pieces_served", 0) == 0


def test_a_connection_that_never_sends_its_ticket_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"abc")  # handshake_s is 1 s
        assert _closed_by_server(s)


def test_frames_under_another_key_are_refused(server, model):
    ticket, keys = _ticket(server, model)
    _, wrong = _ticket(server, model)  # a valid key pair of another session
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, wrong, PIECE, timeout_s=5)
    with pytest.raises((w.BulkStreamError, OSError)):
        conn.get(0, PIECE)
    conn.close()
    _wait(lambda: server.counts["bulk_refused"] == 1)
    assert server.counts.get("pieces_served", 0) == 0


def test_a_piece_sealed_under_another_key_fails_its_tag_into_a_buffer_or_not(server, model):
    for into in (memoryview(bytearray(PIECE)), None):
        ticket, keys = _ticket(server, model)
        _, other = _ticket(server, model)
        conn = BulkConnection.open("127.0.0.1", server.port, ticket,
                                   w.SessionKeys(to_source=keys.to_source, to_puller=other.to_puller), PIECE,
                                   timeout_s=5)
        try:
            with pytest.raises(w.BulkStreamError) as e:  # the source served it; the puller refuses it
                conn.get(0, PIECE, into)
            assert e.value.reason == "bad_tag"
        finally:
            conn.close()


def test_a_piece_the_model_does_not_have_ends_the_stream(server, model):
    ticket, keys = _ticket(server, model)
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    with pytest.raises((w.BulkStreamError, OSError)):
        conn.get(4, PIECE)
    conn.close()
    _wait(lambda: server.counts["bulk_refused"] == 1)


def test_a_removed_model_is_refused_in_the_stream_with_the_reason(server, model):
    ticket, keys = _ticket(server, model)
    model.unlink()
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    with pytest.raises(w.BulkStreamError, match="not on this peer any more"):
        conn.get(0, PIECE)
    conn.close()


def test_sessions_beyond_the_limit_are_refused(server, model):
    conns = []
    for _ in range(2):
        ticket, keys = _ticket(server, model)
        conns.append(BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5))
        conns[-1].get(0, PIECE)
    ticket, keys = _ticket(server, model)
    third = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    with pytest.raises((w.BulkStreamError, OSError)):
        third.get(0, PIECE)
    third.close()
    assert server.counts["bulk_refused"] == 1
    conns[0].close()
    _wait(lambda: server.sessions() == 1)
    ticket, keys = _ticket(server, model)  # room again
    fourth = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    assert len(fourth.get(0, PIECE)) == PIECE
    for c in (conns[1], fourth):
        c.close()


def test_closing_the_server_ends_its_sessions(server, model):
    ticket, keys = _ticket(server, model)
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    conn.get(0, PIECE)
    server.close()
    with pytest.raises((w.BulkStreamError, OSError)):
        conn.get(1, PIECE)
    conn.close()
    _wait(lambda: server.sessions() == 0)


def test_a_member_revoked_since_its_ticket_gets_no_more_pieces(server, model):
    revoked: set[bytes] = set()
    server.revoked = revoked.__contains__
    ticket, keys = _ticket(server, model)
    conn = BulkConnection.open("127.0.0.1", server.port, ticket, keys, PIECE, timeout_s=5)
    assert len(conn.get(0, PIECE)) == PIECE
    revoked.add(PULLER)
    with pytest.raises((w.BulkStreamError, OSError)):
        conn.get(1, PIECE)
    conn.close()
    _wait(lambda: server.counts["bulk_refused"] == 1)
    assert server.counts["bulk_pieces_served"] == 1
