"""Revocations in a running peer: issue them (``mesh revoke``), spread them, apply them.

The pure parts are in ``mesh.identity.revocation`` (the signed record, the bounded list,
its file). This shell:

* **applies** each new revocation at once: the certificate verifier refuses the revoked
  certificate from then on (RPC frames, with reason ``revoked``; member records, so the
  member is never re-admitted with it) and forgets what it learned from it; the member
  is declared dead in the SWIM table and shown ``revoked`` in ``mesh peers``.
* **persists** the list (``revocations.json``, 0600) so a restart keeps refusing.
* **spreads** it, as one-way casts (method ``revocations``) on the gossip connections:

  - push: the peer that issues a revocation sends it to every live member; a peer that
    learns one forwards it to ``fanout`` random live members (an epidemic, in case a
    datagram was lost);
  - anti-entropy: every ``interval_s`` a peer holding revocations sends the digest of
    its list to one random live member, and at once to a member that (re)joins. A
    receiver whose list differs answers with its whole list and its digest (leg 2); if
    the first side then holds something the second lacks it sends its whole list
    (leg 3). A list is at most ``DEFAULT_MAX_REVOCATIONS`` entries (~0.5 MB), one frame.

  Casts come only from authenticated members (the RPC server's gate), and every entry is
  verified against the mesh authority's key before it counts, so a member can spread a
  revocation but never forge one. Attack: digest probes that make us send our list
  (amplification) are answered at most once per sender per half interval.
* **issues**: method ``mesh.revoke`` (local callers only: this peer's own key and the
  trust file's, i.e. the ``mesh`` CLI on this machine) resolves a member by name or
  peer id prefix and signs a revocation with the authority key in this data dir.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.clock import SYSTEM, Clock
from mesh.errors import CertificateError, IdentityError, InvalidRequest, MeshError
from mesh.gossip.effects import MemberChanged
from mesh.gossip.member import Status
from mesh.gossip.service import Membership
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import Certificate
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.keys import peer_id_text
from mesh.identity.revocation import Revocation, RevocationList, save_revocations, sign_revocation
from mesh.rpc.server import CallContext, Method, oneway, unary
from mesh.rpc.tasks import Background

log = logging.getLogger("mesh.identity.revocation_service")

REVOCATIONS_METHOD = "revocations"  # cast {r: [revocation bytes], d: digest (optional), leg: 1|2}
REVOKE_METHOD = "mesh.revoke"  # unary, local callers only: {peer: name or id prefix} -> summary
MIN_PREFIX_CHARS = 4  # a peer id prefix shorter than this names too many peers to be meant
MAX_THROTTLE = 4096


class RevocationService:
    def __init__(
        self,
        *,
        revocations: RevocationList,
        path: Path,
        verifier: CertificateVerifier,
        membership: Membership,
        authority_key: Path,
        self_id: bytes,
        is_local: Callable[[bytes], bool],
        interval_s: float,
        fanout: int = 3,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
    ) -> None:
        self.revocations = revocations
        self.path = path
        self.verifier = verifier
        self.membership = membership
        self.authority_key = authority_key
        self.self_id = self_id
        self.is_local = is_local
        self.interval_s = interval_s
        self.fanout = fanout
        self._clock = clock
        self._rng = rng or random.Random()
        self._answered: dict[bytes, float] = {}  # sender -> when we last sent it our whole list
        self._background = Background("revocations")
        self.refused = 0  # revocations received that failed verification
        self.self_revoked: Revocation | None = None
        membership.listeners.append(self._on_member_changed)

    def methods(self) -> dict[str, Method]:
        return {REVOCATIONS_METHOD: oneway(self._on_cast), REVOKE_METHOD: unary(self._on_revoke)}

    async def start(self) -> None:
        for rev in self.revocations:  # loaded from the file: nobody revoked is admitted again
            self._apply(rev)
        await self._background.start(loop=self._loop)

    async def stop(self) -> None:
        await self._background.close()

    def stats(self) -> dict[str, Any]:
        return {"held": len(self.revocations), "refused": self.refused, "evicted": self.revocations.evictions}

    # -- learning and applying ------------------------------------------------------------

    def accept(self, blobs: list[bytes], *, push_to_all: bool = False) -> list[Revocation]:
        """Verify and keep ``blobs``; apply, save and spread the new ones."""
        new, refused = self.revocations.add_many(blobs, now=self._clock())
        self.refused += refused
        if not new:
            return new
        try:
            save_revocations(self.path, self.revocations)
        except OSError as e:  # still applied in memory; the next change retries the write
            log.error("could not save the revocation list %s: %s", self.path, e)
        for rev in new:
            self._apply(rev)
            log.warning("revoked by the mesh authority: %s (%s)", rev.name or "?", rev.peer_id_text)
        targets = list(self.membership.live_addresses().values())
        if not push_to_all and len(targets) > self.fanout:
            targets = self._rng.sample(targets, self.fanout)
        for address in targets:
            self.membership.cast(address, REVOCATIONS_METHOD, {"r": [r.to_bytes() for r in new]})
        return new

    def _apply(self, rev: Revocation) -> None:
        self.verifier.revoke(rev)
        if rev.peer_id == self.self_id:
            self.self_revoked = rev
            log.error(
                "the mesh authority revoked THIS peer's certificate (at %d): other members refuse it now; "
                "to take part again this device needs a new join token", rev.revoked_at,
            )
            return
        self.membership.expel(rev.peer_id)

    # -- the wire ---------------------------------------------------------------------------

    async def _on_cast(self, args: dict, ctx: CallContext) -> None:
        blobs = args.get("r", [])
        if not isinstance(blobs, list) or len(blobs) > self.revocations.max_entries:
            raise MeshError("revocations cast: 'r' must be a list of at most the list's size")
        self.accept([b for b in blobs if isinstance(b, bytes)])
        theirs, leg = args.get("d"), args.get("leg")
        if not isinstance(theirs, bytes) or theirs == self.revocations.digest() or leg not in (1, 2):
            return
        address = self.membership.live_addresses().get(ctx.sender)
        if address is None or not self._may_answer(ctx.sender):
            return
        reply: dict[str, Any] = {"r": self.revocations.to_wire()}
        if leg == 1:
            reply.update(d=self.revocations.digest(), leg=2)
        self.membership.cast(address, REVOCATIONS_METHOD, reply)

    def _may_answer(self, sender: bytes) -> bool:
        now = self._clock()
        if now < self._answered.get(sender, float("-inf")) + self.interval_s / 2:
            return False
        if len(self._answered) >= MAX_THROTTLE:
            self._answered.clear()
        self._answered[sender] = now
        return True

    def _probe(self, address: str) -> None:
        self.membership.cast(address, REVOCATIONS_METHOD, {"r": [], "d": self.revocations.digest(), "leg": 1})

    def _on_member_changed(self, fx: MemberChanged) -> None:
        # a member that (re)joins may have missed revocations: tell it our digest now
        if fx.new is Status.ALIVE and fx.old is not Status.SUSPECT and len(self.revocations):
            address = self.membership.live_addresses().get(fx.peer_id)
            if address is not None:
                self._probe(address)

    async def _loop(self) -> None:
        while True:
            await self._clock.sleep(self.interval_s * self._rng.uniform(0.8, 1.2))
            now = self._clock()
            if self.revocations.prune(now=now):
                try:
                    save_revocations(self.path, self.revocations)
                except OSError as e:
                    log.error("could not save the revocation list %s: %s", self.path, e)
            if len(self.revocations):
                live = list(self.membership.live_addresses().values())
                if live:
                    self._probe(self._rng.choice(live))

    # -- issuing (mesh revoke) -----------------------------------------------------------------

    async def _on_revoke(self, args: dict, ctx: CallContext) -> dict:
        if not self.is_local(ctx.sender):
            raise InvalidRequest("mesh.revoke is for the mesh CLI on this peer's machine")
        target = args.get("peer")
        if not isinstance(target, str) or not 0 < len(target) <= 64:
            raise InvalidRequest("name the peer to revoke: its name or a peer id prefix")
        return self.revoke(target)

    def revoke(self, target: str) -> dict[str, Any]:
        """Sign, keep, apply and spread a revocation of the member ``target`` names."""
        if not self.authority_key.exists():
            raise InvalidRequest(
                f"this peer's data dir holds no mesh authority key ({self.authority_key}); "
                "run `mesh revoke` on the device where the mesh was created"
            )
        cert = self._resolve(target)
        now = self._clock()
        held = self.revocations.revocation_for(cert)
        if held is not None:
            return {**held.summary(), "already": True}
        if self.revocations.full:
            raise InvalidRequest(f"the revocation list is full ({self.revocations.max_entries}); "
                                 "it empties as revoked certificates expire")
        try:
            authority = MeshAuthority.load(self.authority_key)
        except IdentityError as e:
            raise InvalidRequest(str(e)) from None
        if authority.public_raw != self.revocations.authority_public_raw:
            raise InvalidRequest("the authority key in this data dir is not this mesh's authority")
        # Every certificate of this key issued until now expires by ``until``: the one we
        # saw, and any other the authority issued (renewals are DEFAULT_CERT_TTL_S long).
        until = max(cert.expires_at, int(now) + DEFAULT_CERT_TTL_S) + 1
        rev = sign_revocation(
            authority.identity, peer_public_raw=cert.peer_public, revoked_at=int(now), until=until,
            serial=cert.serial, name=cert.name,
        )
        self.accept([rev.to_bytes()], push_to_all=True)
        return {**rev.summary(), "already": False, "told": len(self.membership.live_addresses())}

    def _resolve(self, target: str) -> Certificate:
        """The certificate of the one member whose name is ``target`` or whose id starts with it."""
        matches: dict[bytes, Certificate] = {}
        named: set[bytes] = set()
        for m in self.membership.swim.members():
            if m.is_self:
                continue
            pid = peer_id_text(m.peer_id)
            if m.name == target or (len(target) >= MIN_PREFIX_CHARS and pid.startswith(target.lower())):
                try:
                    cert = Certificate.from_bytes(m.credential)
                except CertificateError:
                    continue
                if cert.authority_public == self.revocations.authority_public_raw and cert.peer_id == m.peer_id:
                    matches[m.peer_id] = cert
                    if m.name == target:
                        named.add(m.peer_id)
        if not matches:
            me = peer_id_text(self.self_id)
            own_name = self.membership.swim.own_record.name
            if target == own_name or (len(target) >= MIN_PREFIX_CHARS and me.startswith(target.lower())):
                raise InvalidRequest("that is this peer itself: the authority's own peer cannot be revoked")
            raise InvalidRequest(f"no member of this mesh is named {target!r} or has an id starting with it "
                                 "(see `mesh peers`)")
        if named:  # an exact name wins over an id prefix that happens to match
            matches = {pid: c for pid, c in matches.items() if pid in named}
        if len(matches) > 1:  # a name outlives a key (mesh rotate): the member not yet revoked is meant
            live = {pid: c for pid, c in matches.items() if pid not in self.membership.revoked}
            matches = live or matches
        if len(matches) > 1:
            names = ", ".join(f"{c.name} ({c.peer_id_text[:12]})" for c in matches.values())
            raise InvalidRequest(f"{target!r} matches several members: {names}; give more of the peer id")
        return next(iter(matches.values()))
