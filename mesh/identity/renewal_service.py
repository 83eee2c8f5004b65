"""Renewal in a running peer: keep this peer's certificate fresh while it is in the mesh.

Every ``check_s`` the ``Renewer`` asks whether ``fraction`` of the certificate's
lifetime has passed (``mesh.identity.renewal.renewal_due``). When it has, it gets a new
certificate for the same keys: from the authority key in its own data dir when it holds
it, else by calling ``mesh.renew`` on a live member whose gossip meta says it can
(``renew: true``, set by peers holding the authority key), trying each such member in
random order. The reply is checked (``accept_renewal``), saved in ``mesh.json`` and
handed to ``on_renewed``, which makes the peer present it from then on (beside every
frame, and in its signed member record). Members that cached the old certificate keep
using it until it expires, then learn the new one from the next frame or record.

If nobody can renew (the authority's device is off), it tries again every ``check_s``
and warns; the peer keeps working until its certificate expires.

``serve_renewal`` is the authority side (method ``mesh.renew``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from mesh.clock import SYSTEM, Clock
from mesh.errors import ConfigError, MeshError
from mesh.gossip.service import Membership
from mesh.identity.authority import DEFAULT_CERT_TTL_S, MeshAuthority
from mesh.identity.certificate import DEFAULT_SKEW_S, Certificate
from mesh.identity.credentials import CertificateVerifier
from mesh.identity.membership import MeshMembership
from mesh.identity.renewal import RENEW_METHOD, accept_renewal, handle_renew, renewal_due
from mesh.paths import DataDir
from mesh.rpc.pool import PeerPool
from mesh.rpc.server import CallContext, Method, unary
from mesh.rpc.tasks import Background

log = logging.getLogger("mesh.identity.renewal_service")


def serve_renewal(
    data: DataDir, verifier: CertificateVerifier, *, clock: Callable[[], float] = time.time,
    ttl_s: float = DEFAULT_CERT_TTL_S,
) -> Method:
    """``mesh.renew``: re-issue the caller's own certificate (only where the authority key is)."""

    async def renew(args: dict, ctx: CallContext) -> dict:
        if not data.authority_key.exists():
            raise MeshError("this peer does not hold the mesh authority key; ask one whose meta says renew")
        now = clock()
        current = verifier.certificate_for(ctx.sender, now=now)  # valid and not revoked, or None
        result = handle_renew(current, authority=MeshAuthority.load(data.authority_key), now=now, ttl_s=ttl_s)
        log.info("renewed the certificate of %s (%s)", current.name, current.peer_id_text[:12])
        return result

    return unary(renew)


def holds_authority(data: DataDir) -> bool:
    """Whether this peer can answer ``mesh.renew`` (its gossip meta says ``renew: true``)."""
    return data.authority_key.exists()


class Renewer:
    def __init__(
        self,
        *,
        data: DataDir,
        membership: MeshMembership,
        certificate: Certificate,
        members: Membership,
        pool: PeerPool,
        on_renewed: Callable[[MeshMembership, Certificate], None],
        fraction: float = 2 / 3,
        check_s: float = 60.0,
        skew_s: float = DEFAULT_SKEW_S,
        clock: Clock = SYSTEM,
        rng: random.Random | None = None,
        call_timeout_s: float = 10.0,
    ) -> None:
        if not 0.5 <= fraction < 1:
            raise ConfigError(f"renew_at must be in [0.5, 1): the authority renews after half a lifetime, got {fraction}")
        if check_s <= 0:
            raise ConfigError("renew_check_s must be positive")
        self.data = data
        self.membership = membership
        self.current = certificate
        self.members = members
        self.pool = pool
        self.on_renewed = on_renewed
        self.fraction = fraction
        self.check_s = check_s
        self.skew_s = skew_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.call_timeout_s = call_timeout_s
        self._background = Background("renewal")
        self.renewals = 0
        self.failures = 0

    async def start(self) -> None:
        await self._background.start(loop=self._loop)

    async def stop(self) -> None:
        await self._background.close()

    async def _loop(self) -> None:
        while True:
            await self._clock.sleep(self.check_s)
            await self.renew_if_due()

    async def renew_if_due(self) -> bool:
        """Renew when due; True when a new certificate is in use."""
        now = self._clock()
        if not renewal_due(self.current, now=now, fraction=self.fraction):
            return False
        try:
            reply = await self._obtain(now)
            cert = accept_renewal(
                reply, current=self.current, authority_public_raw=self.membership.authority_public,
                now=self._clock(), skew_s=self.skew_s,
            )
        except MeshError as e:
            self.failures += 1
            log.warning("certificate renewal failed (expires in %.0fs): %s", self.current.expires_at - now, e)
            return False
        membership = MeshMembership.from_certificate(cert.to_bytes(), seeds=self.membership.seeds)
        membership.save(self.data.membership)
        self.membership, self.current = membership, cert
        self.renewals += 1
        self.on_renewed(membership, cert)
        log.info("certificate renewed: valid until %s", time.strftime("%Y-%m-%d %H:%M", time.localtime(cert.expires_at)))
        return True

    async def _obtain(self, now: float) -> dict:
        if self.data.authority_key.exists():
            return handle_renew(self.current, authority=MeshAuthority.load(self.data.authority_key), now=now)
        return await ask_authority(self.members, self.pool, RENEW_METHOD, {}, rng=self._rng,
                                   timeout_s=self.call_timeout_s)


async def ask_authority(
    members: Membership, pool: PeerPool, method: str, args: dict, *, rng: random.Random, timeout_s: float
) -> dict:
    """Call ``method`` on a live member holding the authority key (its gossip meta says
    ``renew: true``), trying each in random order; the first answer wins."""
    holders = [
        m.address for m in members.view()
        if not m.is_self and m.state == "alive" and m.address and m.meta is not None and m.meta.renew
    ]
    if not holders:
        raise MeshError("no live member holds the mesh authority key (is its device on?)")
    rng.shuffle(holders)
    errors = []
    for address in holders:
        try:
            return await pool.client(address).call(method, args, timeout_s=timeout_s)
        except MeshError as e:
            errors.append(f"{address}: {e}")
    raise MeshError("; ".join(errors))
