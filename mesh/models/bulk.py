"""The bulk piece stream's sockets (rules and frames: ``mesh.models.bulk_wire``).

- ``BulkServer`` (a source): a TCP listener on the peer's RPC host; each connection
  must open with a live ticket (``models.bulk`` made it) and is then served in a thread
  of its own (at most ``max_sessions``): a GET is answered by reading the piece from the
  model's file and sealing it. A bad ticket, frame or tag, or a member revoked since
  its ticket, ends the connection and is counted in ``counts["bulk_refused"]``.
- ``BulkConnection`` (a puller): one connection, blocking, one piece at a time; the
  puller runs it in a worker thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from mesh.models import bulk_wire as w

log = logging.getLogger("mesh.models")

HANDSHAKE_S = 5.0  # a connection must send its ticket within this
IDLE_S = 30.0  # a session with no GET for this long is closed
CONNECT_S = 5.0
MAX_SESSIONS = 16


def read_exact(sock: socket.socket, n: int, into: bytearray | None = None) -> memoryview:
    """Exactly ``n`` bytes (into ``into`` when given); ``EOFError`` if the peer closes first."""
    buf = into if into is not None and len(into) >= n else bytearray(n)
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise EOFError("the bulk stream was closed")
        got += r
    return view


class BulkServer:
    def __init__(self, *, grants: w.BulkGrants, counts: dict[str, int], max_sessions: int = MAX_SESSIONS,
                 idle_s: float = IDLE_S, handshake_s: float = HANDSHAKE_S,
                 revoked: Callable[[bytes], bool] = lambda peer: False) -> None:
        self.grants = grants
        self.revoked = revoked  # a member revoked since its grant gets nothing more (checked before each piece;
        # called from the session threads: a lookup that is safe beside the loop's changes)
        self.counts = counts  # shared with ModelService: pieces_served, bytes_served, bulk_*
        for k in ("bulk_sessions", "bulk_refused", "bulk_pieces_served"):
            self.counts.setdefault(k, 0)
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.handshake_s = handshake_s
        self.port = 0
        self._lock = threading.Lock()  # grants and counts, from the loop and the session threads
        self._sock: socket.socket | None = None
        self._sessions: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int = 0) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host.strip("[]"), port), family=family, backlog=32)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="mesh-bulk", daemon=True)
        self._thread.start()
        log.info("bulk piece stream on %s port %d", host, self.port)
        return self.port

    def grant(self, peer: bytes, sha: str, keys: w.SessionKeys, ticket: bytes, *, path: str, size: int,
              piece_size: int) -> w.Grant:
        with self._lock:
            return self.grants.add(ticket, peer, sha, keys, path=path, size=size, piece_size=piece_size)

    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            for s in list(self._sessions):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def _refuse(self, reason: str, why: str) -> None:
        self._count("bulk_refused")
        log.warning("bulk stream refused (%s): %s", reason, why)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                full = len(self._sessions) >= self.max_sessions
                if not full:
                    self._sessions.add(conn)
            if full:
                self._refuse("too_many", f"{self.max_sessions} bulk sessions already")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="mesh-bulk-session", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        fd = -1
        try:
            conn.settimeout(self.handshake_s)
            ticket = bytes(read_exact(conn, w.TICKET_BYTES))
            with self._lock:
                grant = self.grants.take(ticket)
            if grant is None:
                raise w.BulkStreamError("bad_ticket", "an unknown, used or expired bulk ticket")
            try:
                fd = os.open(grant.path, os.O_RDONLY)
            except OSError as e:  # removed since the grant: say so in the stream
                fd = -1
                why = f"model {grant.sha[:12]} is not on this peer any more ({e.strerror})"
            self._count("bulk_sessions")
            conn.settimeout(self.idle_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            opener = w.Opener(grant.keys.to_source, {w.GET: w.INDEX.size})
            sealer = w.Sealer(grant.keys.to_puller)
            buf, out = bytearray(grant.piece_size), bytearray(grant.piece_size + w.TAG_BYTES)
            while not self._closed.is_set():
                try:
                    header = bytes(read_exact(conn, w.HEADER.size))
                except EOFError:
                    return  # the puller is done
                _, length = opener.header(header)
                index = w.parse_get(opener.open(header, read_exact(conn, length)), grant.pieces)
                if self.revoked(grant.peer):
                    raise w.BulkStreamError("revoked", f"{grant.peer.hex()[:12]} was revoked; its stream ends")
                offset, length = grant.piece_range(index)
                piece = memoryview(buf)[:length]
                if fd < 0 or os.preadv(fd, [piece], offset) != length:
                    kind, payload = w.NO, (why if fd < 0 else f"piece {index}: short read").encode()[:w.MAX_REASON]
                else:
                    kind, payload = w.PIECE, piece
                reply = sealer.seal_into(kind, payload, out)
                if kind == w.PIECE:  # counted as it goes out (before the puller can have it)
                    with self._lock:
                        self.counts["pieces_served"] = self.counts.get("pieces_served", 0) + 1
                        self.counts["bytes_served"] = self.counts.get("bytes_served", 0) + length
                        self.counts["bulk_pieces_served"] = self.counts.get("bulk_pieces_served", 0) + 1
                conn.sendall(reply[0])
                conn.sendall(reply[1])
        except w.BulkStreamError as e:
            self._refuse(e.reason, str(e))
        except (OSError, EOFError):
            pass  # the connection went away or idled out
        finally:
            if fd >= 0:
                os.close(fd)
            with self._lock:
                self._sessions.discard(conn)
            conn.close()


class BulkConnection:
    """A puller's end of one bulk stream; blocking (run it in a thread)."""

    def __init__(self, sock: socket.socket, keys: w.SessionKeys, piece_size: int) -> None:
        self._sock = sock
        self._sealer = w.Sealer(keys.to_source)
        self._opener = w.Opener(keys.to_puller, {w.PIECE: piece_size, w.NO: w.MAX_REASON})
        self._buf = bytearray(piece_size + w.TAG_BYTES)

    @classmethod
    def open(cls, host: str, port: int, ticket: bytes, keys: w.SessionKeys, piece_size: int,
             timeout_s: float) -> BulkConnection:
        sock = socket.create_connection((host.strip("[]"), port), timeout=CONNECT_S)
        try:
            sock.settimeout(timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(ticket)
        except OSError:
            sock.close()
            raise
        return cls(sock, keys, piece_size)

    def get(self, index: int, length: int, into=None):
        """Piece ``index`` (``length`` bytes, from the manifest): bytes, or with ``into``
        (a writable buffer of at least ``length`` bytes) decrypted into it and returned as
        a memoryview of it. ``BulkStreamError`` for a frame that breaks the rules or a
        refusal; ``OSError``/``EOFError`` for a lost link."""
        header, sealed = self._sealer.seal(w.GET, w.get_frame(index))
        try:
            self._sock.sendall(header + sealed)
            header = bytes(read_exact(self._sock, w.HEADER.size))
            kind, n = self._opener.header(header)
            sealed = read_exact(self._sock, n, self._buf)
            fits = into is not None and kind == w.PIECE and n - w.TAG_BYTES <= memoryview(into).nbytes
            plaintext = self._opener.open(header, sealed, into if fits else None)
        except EOFError:
            raise w.BulkStreamError("closed", f"the source closed the bulk stream before piece {index}") from None
        if kind == w.NO:
            raise w.BulkStreamError("refused", f"the source refused piece {index}: "
                                               f"{bytes(plaintext).decode('utf-8', 'replace')}")
        if memoryview(plaintext).nbytes != length:
            raise w.BulkStreamError("bad_length", f"piece {index} came with {memoryview(plaintext).nbytes} bytes, "
                                                  f"not {length}")
        return plaintext

    def close(self) -> None:
        try:  # wakes a worker thread still waiting in recv on it
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
