"""The inviter's store of open join invites (``invites.json`` in the data dir).

Each invite is ``invite_id -> (secret, expires_at, used_by, used_at)``. ``create`` adds
one (``mesh invite``, from the CLI); ``redeem`` spends one (the running peer, answering
an enrol request). An invite is single-use: it is marked used under an exclusive
``fcntl.flock`` on ``invites.json.lock``, held across read, check and atomic write, so
two redemptions racing in two processes cannot both succeed. (The lock is on a separate
file because the atomic write replaces ``invites.json``'s inode, and a lock on the old
inode would not exclude a process that opened the new one.)

The file holds secrets: it is written 0600 and refused when group or others can read it.

Bounds: at most ``max_invites`` unexpired invites (``create`` refuses past it rather than
silently dropping a token someone already printed); expired ones are pruned on every
write; the file is refused unread past ``MAX_STORE_BYTES``. Only local processes write
here, so the bounds defend against a runaway script, not the network. Redemption order
(first failure wins): request time window, unknown id, bad proof, expired, already used;
the proof is checked before the invite's state is revealed, so only someone holding the
secret learns whether it expired or was used.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import IdentityError, TokenError
from mesh.identity.files import read_private, write_atomic
from mesh.identity.tokens import INVITE_ID_BYTES, SECRET_BYTES, enrol_proof, invite_id_for

INVITES_FILE = "invites.json"
STORE_VERSION = 1
DEFAULT_INVITE_TTL_S = 15 * 60  # a printed token works for 15 minutes
MAX_INVITE_TTL_S = 7 * 24 * 3600
DEFAULT_MAX_INVITES = 1000
MAX_STORE_BYTES = 1 << 20  # 1000 invites are ~200 KB
ENROL_WINDOW_S = 300  # |joiner clock - inviter clock| allowed in an enrol request


@dataclass(frozen=True)
class Invite:
    invite_id: bytes
    secret: bytes
    expires_at: int


class InviteStore:
    def __init__(self, path: Path, *, max_invites: int = DEFAULT_MAX_INVITES) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.max_invites = max_invites

    def create(self, *, now: float, ttl_s: float = DEFAULT_INVITE_TTL_S) -> Invite:
        """Open a new single-use invite valid for ``ttl_s`` seconds from ``now``."""
        if not 0 < ttl_s <= MAX_INVITE_TTL_S:
            raise TokenError(f"an invite lifetime must be in (0, {MAX_INVITE_TTL_S}] seconds, got {ttl_s}")
        secret = secrets.token_bytes(SECRET_BYTES)
        invite = Invite(invite_id_for(secret), secret, int(now) + max(1, int(ttl_s)))
        with self._locked():
            invites = _prune(self._read(), now)
            if len(invites) >= self.max_invites:
                raise TokenError(f"{len(invites)} invites are open, the most allowed; wait for some to expire")
            invites[invite.invite_id] = {"secret": secret, "expires_at": invite.expires_at, "used_by": None}
            self._write(invites)
        return invite

    def redeem(
        self,
        invite_id: bytes,
        proof: bytes,
        joiner_public_raw: bytes,
        name: str,
        ts: int,
        *,
        now: float,
        curve_public: bytes = b"",
    ) -> None:
        """Spend an invite for one joiner key, or raise ``TokenError`` saying why not."""
        if not (
            all(isinstance(v, bytes) for v in (invite_id, proof, joiner_public_raw, curve_public))
            and isinstance(name, str)
            and isinstance(ts, int)
            and not isinstance(ts, bool)
        ):
            raise TokenError("malformed enrol request: wrong field types")
        if abs(ts - now) > ENROL_WINDOW_S:
            raise TokenError(
                f"enrol request timestamp is {ts - now:+.0f}s from the inviter's clock (allowed ±{ENROL_WINDOW_S}s); "
                "check the clocks"
            )
        with self._locked():
            invites = self._read()
            entry = invites.get(invite_id)
            if entry is None:
                raise TokenError("unknown invite: never issued here, or expired and forgotten")
            expected = enrol_proof(
                entry["secret"], joiner_public_raw=joiner_public_raw, name=name, ts=ts, curve_public=curve_public
            )
            if not hmac.compare_digest(expected, proof):
                raise TokenError("bad proof: the request does not match the invite's secret")
            if now >= entry["expires_at"]:
                raise TokenError("expired invite: ask for a new `mesh invite`")
            if entry["used_by"] is not None:
                raise TokenError("invite already used: each token enrols one device; ask for a new `mesh invite`")
            entry["used_by"] = joiner_public_raw
            entry["used_at"] = int(now)
            self._write(_prune(invites, now))

    def open_count(self, *, now: float) -> int:
        """Unexpired, unused invites (for `mesh status`)."""
        with self._locked():
            return sum(1 for e in _prune(self._read(), now).values() if e["used_by"] is None)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed, even if we crash
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[bytes, dict]:
        try:
            data = read_private(self.path, max_bytes=MAX_STORE_BYTES, what="invites file")
        except FileNotFoundError:
            return {}
        return _decode(data, source=str(self.path))

    def _write(self, invites: dict[bytes, dict]) -> None:
        write_atomic(self.path, _encode(invites))


def _prune(invites: dict[bytes, dict], now: float) -> dict[bytes, dict]:
    return {k: e for k, e in invites.items() if e["expires_at"] > now}


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _encode(invites: dict[bytes, dict]) -> bytes:
    doc = {
        "version": STORE_VERSION,
        "invites": {
            k.hex(): {
                "secret": _b64(e["secret"]),
                "expires_at": e["expires_at"],
                "used_by": _b64(e["used_by"]),
                "used_at": e.get("used_at"),
            }
            for k, e in invites.items()
        },
    }
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def _decode(data: bytes, *, source: str) -> dict[bytes, dict]:
    bad = IdentityError(f"invites file {source} is corrupt; move it away (open invites are then lost)")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != STORE_VERSION or not isinstance(doc.get("invites"), dict):
            raise bad
        out: dict[bytes, dict] = {}
        for key, e in doc["invites"].items():
            invite_id = bytes.fromhex(key)
            secret = base64.b64decode(e["secret"], validate=True)
            used_by = None if e["used_by"] is None else base64.b64decode(e["used_by"], validate=True)
            expires_at = e["expires_at"]
            if (
                len(invite_id) != INVITE_ID_BYTES
                or len(secret) != SECRET_BYTES
                or invite_id_for(secret) != invite_id
                or not isinstance(expires_at, int)
                or isinstance(expires_at, bool)
            ):
                raise bad
            used_at = e.get("used_at")
            out[invite_id] = {"secret": secret, "expires_at": expires_at, "used_by": used_by, "used_at": used_at}
        return out
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        raise bad from None
