"""Announce this peer and browse for others over mDNS (python-zeroconf, asyncio API).

A thin shell: it owns the ``AsyncZeroconf`` instance, the registration, the browser and
the resolve tasks; every check on what the network says is in ``hints.py``. A service
found on the LAN becomes a ``Hint`` handed to ``on_hint`` only if its record is well
formed and of our mesh; the hint is still only an address to try (the handshake admits).

Timings come from zeroconf (RFC 6762): registering first probes the name (s8.1: a
random 150..250 ms, then three probes 500 ms apart), so ``start()`` returns about 1.2 s
after it is called (measured here). Browsing starts before that, so peers already on
the LAN are usually reported by the time ``start()`` returns; peers that start later are
heard from their own announcements. A peer id that another host already announces
fails the probe (``DiscoveryError``). ``aclose()`` withdraws the service with goodbye
packets (TTL 0, s10.1), so other browsers report it gone at once, not at TTL expiry.

What mDNS does not tell (measured in tests/test_netns_mdns.py): a peer killed with
SIGKILL sends no goodbye, and its records stay in other caches for their TTL (75 min
for PTR/TXT), so ``on_gone`` is not called for it; failure detection is gossip's job.
If it restarts with the same id, port and address, its records are unchanged, so the
others get no new ``on_hint`` for it (a restart on another port or address does give
one); the restarted peer itself sees everyone afresh and reaches out, which is enough
for it to rejoin.

zeroconf and socket errors are mapped here to ``DiscoveryError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Self

import ifaddr
import zeroconf
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.discovery.hints import (
    SERVICE_TYPE,
    DiscoveryStats,
    DropReason,
    Hint,
    hint_from_record,
    instance_name,
    txt_for,
)
from mesh.errors import ConfigError, MeshError
from mesh.rpc.envelope import PROTOCOL_VERSION, SUPPORTED_VERSIONS

log = logging.getLogger(__name__)

MAX_PENDING_RESOLVES = 64  # services being resolved at once; more are shed (OVERLOAD)
MAX_KNOWN_NAMES = 1024  # instance name -> peer id, to report removals; oldest evicted


class DiscoveryError(MeshError):
    """mDNS could not start or announce (no usable interface, socket error, or another
    process already announcing this peer id)."""


def local_ipv4_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback, to announce by default."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                addr = ipaddress.ip_address(ip.ip)
                if not addr.is_loopback and not addr.is_link_local and ip.ip not in out:
                    out.append(ip.ip)
    return out


class MdnsDiscovery:
    """Announces ``peer_id`` of mesh ``mesh`` at ``port`` and browses for other peers.

    ``interfaces``: IP addresses to listen and announce on (default: every IPv4 address
    of this host except loopback). ``announce`` / ``browse`` turn either half off.
    Callbacks run in the event loop and must not block; ``on_gone(peer_id)`` is called
    when a peer we reported withdraws its service (goodbye or TTL expiry)."""

    def __init__(
        self,
        *,
        peer_id: str,
        mesh: str,
        port: int,
        version: int = PROTOCOL_VERSION,
        on_hint: Callable[[Hint], None],
        on_gone: Callable[[str], None] | None = None,
        interfaces: Sequence[str] | None = None,
        announce: bool = True,
        browse: bool = True,
        versions: range = SUPPORTED_VERSIONS,
        resolve_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.time,
        stats: DiscoveryStats | None = None,
        transport_key: str | None = None,
    ) -> None:
        try:
            self._txt = txt_for(peer_id=peer_id, mesh=mesh, version=version, transport_key=transport_key)
        except ValueError as e:
            raise ConfigError(f"mDNS announcement: {e}") from e
        if not 1 <= port <= 65535:
            raise ConfigError(f"mDNS announcement: port out of range: {port}")
        if interfaces is not None:
            try:
                ips = [ipaddress.ip_address(i) for i in interfaces]
            except ValueError as e:
                raise ConfigError(f"mDNS interfaces: {e}") from e
            if any(ip.version != 4 for ip in ips):
                raise ConfigError(f"mDNS interfaces: IPv4 addresses only for now, got {list(interfaces)}")
            interfaces = [str(ip) for ip in ips]
        self.peer_id = peer_id
        self.mesh = mesh
        self.port = port
        self.stats = stats or DiscoveryStats()
        self._on_hint = on_hint
        self._on_gone = on_gone
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._announce = announce
        self._browse = browse
        self._versions = versions
        self._resolve_timeout_ms = int(resolve_timeout_s * 1000)
        self._clock = clock
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task] = set()
        self._resolving: set[str] = set()
        self._again: set[str] = set()  # updated while being resolved: resolve once more
        self._known: OrderedDict[str, str] = OrderedDict()  # instance name -> peer id
        self._closed = False

    @property
    def addresses(self) -> list[str]:
        """The addresses announced (known after ``start()``)."""
        return self._info.parsed_addresses() if self._info else []

    async def start(self) -> None:
        """Open the sockets, start browsing, then probe our name and announce it."""
        addresses = self._interfaces if self._interfaces is not None else local_ipv4_addresses()
        if not addresses:
            raise DiscoveryError("no network interface with an IPv4 address to use for mDNS")
        choice = addresses if self._interfaces is not None else zeroconf.InterfaceChoice.All
        try:
            self._aiozc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        except (zeroconf.Error, OSError, RuntimeError) as e:  # RuntimeError: "No interfaces to listen on"
            raise DiscoveryError(f"cannot open mDNS sockets on {addresses}: {e}") from e
        try:
            if self._browse:  # first: answers arrive while our own name is being probed
                self._browser = AsyncServiceBrowser(
                    self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
                )
            if self._announce:
                info = AsyncServiceInfo(
                    SERVICE_TYPE,
                    instance_name(self.peer_id),
                    port=self.port,
                    properties=self._txt,
                    server=f"{self.peer_id}.local.",
                    parsed_addresses=addresses,
                )
                # probes (RFC 6762 s8.1: about 1.2 s here) and raises NonUniqueNameException
                # if another host answers for our name; then returns, announcing goes on
                # in zeroconf's own task
                await self._aiozc.async_register_service(info)
                self._info = info  # only now is there something to withdraw on close
        except zeroconf.NonUniqueNameException as e:
            await self._close_zeroconf()
            raise DiscoveryError(
                f"another process on this network already announces peer id {self.peer_id} "
                "(the same data dir copied to two machines?)"
            ) from e
        except (zeroconf.Error, OSError) as e:
            await self._close_zeroconf()
            raise DiscoveryError(f"mDNS announcement failed: {e}") from e

    async def aclose(self) -> None:
        """Withdraw the announcement (goodbye packets), stop browsing, close sockets."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_zeroconf()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _close_zeroconf(self) -> None:
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
                self._browser = None
            if self._info is not None:
                # goodbyes: TTL-0 records sent so browsers drop us now (RFC 6762 s10.1)
                sent = await aiozc.async_unregister_service(self._info)
                await asyncio.wait_for(sent, timeout=2.0)
        except (TimeoutError, zeroconf.Error, OSError) as e:
            log.warning("mDNS: withdrawing our announcement failed: %s", e)
        finally:
            try:
                await aiozc.async_close()
            except (zeroconf.Error, OSError) as e:
                log.warning("mDNS: closing failed: %s", e)

    # -- browsing ------------------------------------------------------------------------

    def _on_service_state_change(
        self, zeroconf: zeroconf.Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's browser callback (in the event loop; must not block or raise)."""
        if self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            peer_id = self._known.pop(name.lower(), None)
            if peer_id is not None:
                self.stats.gone += 1
                if self._on_gone is not None:
                    self._call(self._on_gone, peer_id)
            return
        key = name.lower()
        if key in self._resolving:
            self._again.add(key)
            return
        if len(self._resolving) >= MAX_PENDING_RESOLVES:
            self.stats.record(DropReason.OVERLOAD)
            return
        self._resolving.add(key)
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        key = name.lower()
        try:
            while True:
                self._again.discard(key)
                await self._resolve_once(service_type, name)
                if key not in self._again or self._closed:
                    break
        finally:
            self._resolving.discard(key)
            self._again.discard(key)

    async def _resolve_once(self, service_type: str, name: str) -> None:
        aiozc = self._aiozc
        if aiozc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(aiozc.zeroconf, self._resolve_timeout_ms)
        except (zeroconf.Error, OSError) as e:
            log.debug("mDNS: resolving %s failed: %s", name, e)
            found = False
        if not found:
            self.stats.record(DropReason.RESOLVE_FAILED)
            return
        outcome = hint_from_record(
            name=name,
            properties=info.properties,
            addresses=info.parsed_addresses(),
            port=info.port,
            mesh=self.mesh,
            own_peer_id=self.peer_id,
            now=self._clock(),
            versions=self._versions,
        )
        self.stats.record(outcome)
        if isinstance(outcome, DropReason):
            if outcome is not DropReason.OWN:
                log.debug("mDNS: ignoring %s: %s", name, outcome.value)
            return
        self._known[name.lower()] = outcome.peer_id or ""
        self._known.move_to_end(name.lower())
        while len(self._known) > MAX_KNOWN_NAMES:
            self._known.popitem(last=False)
        self._call(self._on_hint, outcome)

    @staticmethod
    def _call(callback: Callable, arg) -> None:
        # A bug in a callback is logged, not raised into zeroconf's dispatch (which would
        # stop it delivering anything else).
        try:
            callback(arg)
        except Exception:
            log.exception("mDNS discovery callback %r failed", callback)
