"""The tunnel (mesh.rpc.tunnel) between two ends in one process: a real TCP target on
loopback, real CurveZMQ, real threads. What a member's grant opens, what a stranger
gets, and what a dead lender does to the stream."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mesh.identity.transport import TransportKeys
from mesh.rpc.tunnel import TunnelPort, TunnelServer


class EchoServer:
    """A TCP server on loopback that answers every read with the same bytes, reversed
    per read: a stand-in target for the byte stream (the ggml RPC server in the product)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _recv_exactly(sock: socket.socket, n: int, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError:  # closed with our bytes unread: an end all the same
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _connect(port: TunnelPort) -> socket.socket:
    """A connection to the port, as the model process makes it."""
    host, p = port.local.split(":")
    return socket.create_connection((host, int(p)), timeout=10)


@pytest.fixture
def ends():
    echo = EchoServer()
    lender, borrower, stranger = TransportKeys.generate(), TransportKeys.generate(), TransportKeys.generate()
    server = TunnelServer(lender, target_port=echo.port)
    port = server.start("127.0.0.1")
    opened: list[TunnelPort] = []

    def open_port(keys: TransportKeys, token: bytes, **kw) -> TunnelPort:
        p = TunnelPort(f"tcp://127.0.0.1:{port}", lender.public, keys, token, **kw)
        p.start()
        opened.append(p)
        return p

    yield server, open_port, borrower, stranger, echo
    for p in opened:
        p.close()
    server.close()
    echo.close()


def test_a_member_with_a_grant_gets_its_bytes_through_both_ways(ends):
    server, open_port, borrower, _, echo = ends
    grant = server.grant(borrower.public, "borrower", 1 << 20)
    port = open_port(borrower, grant.token)
    with _connect(port) as s:
        payload = bytes(range(256)) * 8192  # 2 MiB: several reads and frames
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        assert _recv_exactly(s, len(payload)) == payload
    assert echo.accepted == 1 and server.stats.opened == 1
    assert server.stats.bytes_in == len(payload) and port.stats.bytes_in == len(payload)


def test_a_stranger_without_a_grant_is_refused_and_counted(ends):
    server, open_port, borrower, stranger, echo = ends
    grant = server.grant(borrower.public, "borrower", 1)
    # the borrower's token over the stranger's own CurveZMQ key: the grant names another key
    port = open_port(stranger, grant.token)
    with _connect(port) as s:
        s.sendall(b"hello")
        assert _recv_exactly(s, 5) == b""  # closed without an answer
    assert server.stats.refused["bad_grant"] == 1 and echo.accepted == 0
    assert "lend.reserve" in (port.last_refusal or "")


def test_revoking_the_member_closes_its_open_stream(ends):
    server, open_port, borrower, _, _ = ends
    grant = server.grant(borrower.public, "borrower", 1)
    port = open_port(borrower, grant.token)
    with _connect(port) as s:
        s.sendall(b"ping")
        assert _recv_exactly(s, 4) == b"ping"
        assert server.revoke_key(borrower.public) == 1
        assert _recv_exactly(s, 1) == b""  # the stream ends
    assert server.stats.closed == 1


def test_a_lender_that_goes_silent_ends_the_stream_within_the_dead_time(ends):
    server, open_port, borrower, _, _ = ends
    grant = server.grant(borrower.public, "borrower", 1)
    port = open_port(borrower, grant.token, ping_s=0.2, dead_s=1.5)
    with _connect(port) as s:
        s.sendall(b"ping")
        assert _recv_exactly(s, 4) == b"ping"
        server.close()  # the lender's end disappears without a word (as if its device died)
        started = time.monotonic()
        assert _recv_exactly(s, 1, timeout=15) == b""
        assert time.monotonic() - started < 10
