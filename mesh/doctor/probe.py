"""The shell of ``mesh doctor``: look at the data dir, the local peer, mDNS and each known
address, and return ``Observations`` for the pure rules in ``findings.py``.

Bounded everywhere: the mDNS browse lasts ``wait_s``; each TCP connect and each ping has
``timeout_s``; at most ``MAX_TARGETS`` addresses are probed, all at once; and the whole
run sits under one outer deadline, so the doctor answers even when the network does not.
It only listens on mDNS (it never announces), and its pings are ordinary signed calls.

The ping is signed with this device's peer identity and certificate when it has them
(so a member of the same mesh answers), else with a throwaway key (so a peer still tells
why it refuses). Replies are read with a lenient codec: the sender's key is learned from
whatever well-formed certificate it presents, of any mesh, and the clock window is wide,
because the point is to see and name what is wrong (another mesh, a skewed clock), not
to trust the answer. Nothing learned here is kept or used for anything but the report.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psutil
import zeroconf
import zmq.asyncio
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.config import DEFAULT_RPC_PORT, RpcConfig
from mesh.discovery.hints import SERVICE_TYPE, DropReason, is_mesh_fingerprint, is_peer_id
from mesh.discovery.seeds import RememberedPeers, parse_seed, parse_seed_with_key, split_seed_text
from mesh.doctor.model import (
    MAX_SIGHTINGS,
    EngineView,
    Interface,
    LocalView,
    Observations,
    Probe,
    Reach,
    Sighting,
    Target,
    merge_targets,
    sighting_from_record,
)
from mesh.errors import CertificateError, ConfigError, DeadlineExceeded, IdentityError, MeshError, RpcError
from mesh.gossip.view import BadMeta, MemberView
from mesh.identity.certificate import Certificate, mesh_id_for, mesh_id_text
from mesh.identity.keys import Identity, load_public_raw, peer_id_from_public
from mesh.identity.membership import MeshMembership
from mesh.identity.peerkeys import SELF_PREFIX, self_credential
from mesh.identity.transport import TransportKeys, key_from_text
from mesh.paths import DataDir
from mesh.rpc.client import RpcClient
from mesh.rpc.codec import FrameCodec
from mesh.rpc.zap import CurveClient

MAX_PENDING_RESOLVES = 32
MAX_MESSAGE_CHARS = 300  # a remote error message kept for the report
LENIENT_WINDOW_S = 10 * 365 * 86400.0  # read replies whatever their clock, to measure the skew


def local_interfaces() -> tuple[Interface, ...]:
    """IPv4 addresses of interfaces that are up (loopback included), with prefix lengths."""
    stats = psutil.net_if_stats()
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family != socket.AF_INET or not a.netmask:
                continue
            try:
                prefix = ipaddress.ip_network(f"0.0.0.0/{a.netmask}").prefixlen
            except ValueError:
                continue
            out.append(Interface(name, a.address, prefix))
    return tuple(sorted(set(out), key=lambda i: (i.name, i.address)))


# -- the data dir and the local peer ---------------------------------------------------


class _Local:
    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.membership: MeshMembership | None = None
        self.peer = None  # mesh.client.PeerAddress
        self.problems: list[str] = []


def _read_local(data: DataDir) -> _Local:
    from mesh.client import read_peer_file
    from mesh.errors import PeerUnavailable

    out = _Local()
    if data.identity_key.exists():
        try:
            out.identity = Identity.load(data.identity_key)
        except IdentityError as e:
            out.problems.append(f"cannot read this device's identity: {e}")
    if data.membership.exists():
        try:
            out.membership = MeshMembership.load(data.membership)
        except (IdentityError, OSError) as e:
            out.problems.append(f"cannot read mesh.json: {e}")
    try:
        out.peer = read_peer_file(data)
    except PeerUnavailable as e:
        if data.peer_file.exists():
            out.problems.append(str(e))
    return out


async def _local_engine(data: DataDir, timeout_s: float, running: bool) -> EngineView:
    """This machine's CPU and engine build, and the running peer's engine (``info`` RPC)."""
    from mesh.client import Client
    from mesh.inference.cpu_variant import cpu_summary, lib_dir, variant_files

    try:
        variants = tuple(sorted(variant_files(lib_dir())))
    except MeshError:
        variants = ()
    peer = None
    if running:
        client = Client(data.root, timeout_s=timeout_s)
        try:
            doc = await asyncio.wait_for(client.acall("info", timeout_s=timeout_s), timeout_s + 1)
            peer = doc.get("engine") if isinstance(doc, dict) and isinstance(doc.get("engine"), dict) else None
        except (MeshError, TimeoutError):
            peer = None
        finally:
            await client.aclose()
    return EngineView(cpu=cpu_summary(), variants=variants, peer=peer)


async def _local_members(data: DataDir, timeout_s: float) -> tuple[list[MemberView], str | None]:
    """The running peer's member view (``members`` RPC), or why it could not be read."""
    from mesh.client import Client

    client = Client(data.root, timeout_s=timeout_s)
    try:
        doc = await asyncio.wait_for(client.acall("members", timeout_s=timeout_s), timeout_s + 1)
    except (MeshError, TimeoutError) as e:
        return [], f"the local peer did not list its members: {e}"
    finally:
        await client.aclose()
    members = doc.get("members") if isinstance(doc, dict) else None
    if not isinstance(members, list):
        return [], "the local peer's member list is malformed"
    out = []
    for m in members[:256]:
        try:
            out.append(MemberView.from_wire(m))
        except BadMeta:
            continue  # one malformed entry does not hide the others
    return out, None


# -- mDNS ------------------------------------------------------------------------------


async def browse_mdns(wait_s: float) -> tuple[list[Sighting], Counter[str], str | None]:
    """Listen for ``_mesh._tcp.local.`` for ``wait_s`` seconds; never announce.

    Returns the well-formed records (one per distinct record, any mesh), counts of the
    malformed ones by reason, and why mDNS could not be used (or None)."""
    try:
        aiozc = AsyncZeroconf(interfaces=zeroconf.InterfaceChoice.All, ip_version=IPVersion.V4Only)
    except (zeroconf.Error, OSError, RuntimeError) as e:
        return [], Counter(), str(e) or type(e).__name__
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    sightings: dict[Sighting, None] = {}
    dropped: Counter[str] = Counter()
    tasks: set[asyncio.Task] = set()
    resolving: set[str] = set()

    async def resolve(name: str) -> None:
        try:
            remaining_ms = int(max(0.0, deadline - loop.time()) * 1000)
            if remaining_ms < 50:
                return
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            try:
                found = await info.async_request(aiozc.zeroconf, min(remaining_ms, 3000))
            except (zeroconf.Error, OSError):
                found = False
            if not found:
                dropped[DropReason.RESOLVE_FAILED.value] += 1
                return
            outcome = sighting_from_record(
                name=name, properties=info.properties, addresses=info.parsed_addresses(), port=info.port
            )
            if isinstance(outcome, DropReason):
                dropped[outcome.value] += 1
            elif len(sightings) < MAX_SIGHTINGS:
                sightings[outcome] = None
            else:
                dropped[DropReason.OVERLOAD.value] += 1
        finally:
            resolving.discard(name.lower())

    def on_change(zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed or name.lower() in resolving:
            return
        if len(resolving) >= MAX_PENDING_RESOLVES:
            dropped[DropReason.OVERLOAD.value] += 1
            return
        resolving.add(name.lower())
        task = loop.create_task(resolve(name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = None
    try:
        browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        await asyncio.sleep(wait_s)
    except (zeroconf.Error, OSError) as e:
        return [], dropped, str(e)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if browser is not None:
                await browser.async_cancel()
            await asyncio.wait_for(aiozc.async_close(), 3.0)
        except (TimeoutError, zeroconf.Error, OSError):
            pass
    return list(sightings), dropped, None


# -- one address -----------------------------------------------------------------------


class _Observer:
    """A ``KeyResolver`` and ``credentials`` seam that learns the key of whatever peer
    answers from the certificate it presents, without judging its mesh (see the module
    docstring). One per probed connection; it holds a handful of keys at most."""

    MAX_KEYS = 4

    def __init__(self) -> None:
        self.cert: Certificate | None = None
        self._keys: dict[bytes, Any] = {}

    def key_for(self, peer_id: bytes):
        return self._keys.get(peer_id)

    def learn(self, credential: bytes, now: float) -> bytes:
        if len(self._keys) >= self.MAX_KEYS:
            raise CertificateError("too many keys on one probe")
        if credential.startswith(SELF_PREFIX):
            raw = credential[len(SELF_PREFIX):]
            peer_id = peer_id_from_public(raw)
            self._keys[peer_id] = load_public_raw(raw)
            return peer_id
        cert = Certificate.from_bytes(credential)
        if cert.mesh_id != mesh_id_for(cert.authority_public):
            raise CertificateError("certificate's mesh id does not match its authority key")
        self._keys[cert.peer_id] = load_public_raw(cert.peer_public)
        self.cert = cert
        return cert.peer_id


def _classify_os_error(e: OSError) -> Reach:
    if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
        return Reach.REFUSED
    if isinstance(e, TimeoutError) or e.errno == errno.ETIMEDOUT:
        return Reach.TIMEOUT
    return Reach.UNREACHABLE


async def _tcp(host: str, port: int, timeout_s: float) -> tuple[Reach, str | None, str]:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return Reach.TIMEOUT, None, f"no answer in {timeout_s:g} s"
    except socket.gaierror as e:
        return Reach.UNREACHABLE, None, f"cannot resolve {host}: {e.strerror or e}"
    except OSError as e:
        reach = _classify_os_error(e)
        return reach, None, "connection refused" if reach is Reach.REFUSED else (e.strerror or str(e))
    peer = writer.get_extra_info("peername")
    ip = peer[0] if isinstance(peer, tuple) and peer else None
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass
    return Reach.OPEN, ip if isinstance(ip, str) else None, ""


async def probe(
    target: Target,
    *,
    ctx: zmq.asyncio.Context,
    identity: Identity,
    credential: bytes,
    timeout_s: float,
    transport: TransportKeys | None = None,
    clock: Callable[[], float] = time.time,
) -> Probe:
    """TCP connect, then (if open, and its transport key is known) a signed ``ping`` over
    CurveZMQ; never longer than about 2 x timeout_s."""
    host, port = target.host_port
    reach, ip, detail = await _tcp(host, port, timeout_s)
    if reach is not Reach.OPEN:
        return Probe(target, reach, ip=None, detail=detail)
    if target.transport_key is None:
        return Probe(target, reach, ip=ip, rpc="no_transport_key")
    observer = _Observer()
    codec = FrameCodec(
        identity, observer, config=RpcConfig(timestamp_window_s=LENIENT_WINDOW_S), clock=clock,
        credential=credential, credentials=observer.learn,
    )
    dial = ip or host
    endpoint = f"tcp://[{dial}]:{port}" if ":" in dial else f"tcp://{dial}:{port}"
    keys = transport or TransportKeys.derived_from(identity)
    rpc = RpcClient(codec=codec, endpoint=endpoint, ctx=ctx, curve=CurveClient(keys, target.transport_key))
    sent = clock()
    result: dict | None = None
    code, message = None, ""
    try:
        rpc.connect()
        result = await asyncio.wait_for(rpc.call("ping", {}, timeout_s=timeout_s), timeout_s + 1)
        code = "ok"
    except (DeadlineExceeded, TimeoutError):
        code = "bad_version" if codec.rejections.snapshot().get("bad_version") else "no_reply"
    except RpcError as e:
        code, message = e.code, str(e)
    except MeshError as e:  # mapped errors that are not RpcError (busy, invalid request, ...)
        code, message = getattr(e, "code", type(e).__name__), str(e)
    finally:
        received = clock()
        await rpc.close()
    cert = observer.cert
    peer_id = cert.peer_id_text if cert is not None else None
    remote_time = None
    if result is not None:
        said = result.get("peer")
        if isinstance(said, str) and is_peer_id(said):
            peer_id = said if peer_id is None else peer_id
        t = result.get("time")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
            remote_time = float(t)
    mesh = mesh_id_text(cert.mesh_id) if cert is not None else None
    if mesh is not None and not is_mesh_fingerprint(mesh):
        mesh = None
    return Probe(
        target, Reach.OPEN, ip=ip, rpc=code, message=_printable(message)[:MAX_MESSAGE_CHARS], peer_id=peer_id,
        mesh=mesh, remote_time=remote_time, sent_at=sent, received_at=received,
    )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


# -- the whole run ---------------------------------------------------------------------


def _targets(
    joins: Sequence[str], local: _Local, data: DataDir, members: list[MemberView], sightings: list[Sighting],
    own_addresses: set[str],
) -> tuple[list[Target], list[str]]:
    found: list[Target] = []
    problems: list[str] = []
    for j in joins:
        address, key = parse_seed_with_key(j, default_port=DEFAULT_RPC_PORT)
        found.append(Target(address, ("join",), transport_key=key))
    if local.membership is not None:
        for s in local.membership.seeds:
            try:
                text, key = split_seed_text(s)
                found.append(Target(parse_seed(text, default_port=DEFAULT_RPC_PORT), ("seed",), transport_key=key))
            except (ConfigError, IdentityError):
                continue
    for m in members:
        if m.is_self or not is_peer_id(m.peer_id):
            continue
        key = None
        if m.transport is not None:
            try:
                key = key_from_text(m.transport)
            except IdentityError:
                key = None
        for a in m.addresses[:2]:
            try:
                found.append(Target(parse_seed(a), ("members",), m.peer_id, m.name[:64], transport_key=key))
            except ConfigError:
                continue
    try:
        remembered = RememberedPeers.load(data.known_peers)
    except ConfigError as e:
        problems.append(str(e))
    else:
        for h in remembered.hints():
            try:
                found.append(Target(parse_seed(h.address), ("known_peers",), h.peer_id,
                                    transport_key=h.transport_key))
            except ConfigError:
                continue
    own_id = local.identity.peer_id_text if local.identity else None
    mesh = local.membership.mesh_id_text if local.membership else None
    for s in sightings:
        if s.peer_id != own_id and (mesh is None or s.mesh == mesh) and s.addresses:
            ip = s.addresses[0]
            addr = f"tcp://[{ip}]:{s.port}" if ":" in ip else f"tcp://{ip}:{s.port}"
            found.append(Target(addr, ("mdns",), s.peer_id, transport_key=s.transport_key))
    # a key heard over mDNS (any mesh: the doctor asks neighbours of other meshes too)
    # serves a target given without one, e.g. a bare --join HOST:PORT
    heard: dict[str, bytes] = {}
    for s in sightings:
        for ip in s.addresses:
            if s.transport_key is not None:
                heard[f"tcp://[{ip}]:{s.port}" if ":" in ip else f"tcp://{ip}:{s.port}"] = s.transport_key
    targets = [t if t.transport_key or t.address not in heard else replace(t, transport_key=heard[t.address])
               for t in merge_targets(found) if t.address not in own_addresses]
    return targets, problems


async def observe(
    data: DataDir,
    *,
    joins: Sequence[str] = (),
    wait_s: float = 3.0,
    timeout_s: float = 3.0,
    clock: Callable[[], float] = time.time,
) -> Observations:
    """Everything ``diagnose`` needs, in about ``wait_s + 2 * timeout_s`` seconds at most."""
    for j in joins:  # bad --join values are the caller's mistake: say so before waiting
        parse_seed_with_key(j, default_port=DEFAULT_RPC_PORT)
    backstop = wait_s + 4 * timeout_s + 10
    async with asyncio.timeout(backstop):
        return await _observe(data, joins=joins, wait_s=wait_s, timeout_s=timeout_s, clock=clock)


async def _observe(
    data: DataDir, *, joins: Sequence[str], wait_s: float, timeout_s: float, clock: Callable[[], float]
) -> Observations:
    local = _read_local(data)
    problems = list(local.problems)
    browse = asyncio.create_task(browse_mdns(wait_s))
    members: list[MemberView] = []
    if local.peer is not None:
        members, why = await _local_members(data, timeout_s)
        if why:
            problems.append(why)
    sightings, dropped, mdns_error = await browse
    own_id = local.identity.peer_id_text if local.identity else None
    others = [m for m in members if not m.is_self]
    advertise = tuple(local.peer.advertise) if local.peer is not None else ()
    interfaces = local_interfaces()
    own_addresses = set(advertise)
    if local.peer is not None:
        own_addresses.add(local.peer.endpoint)
        port = local.peer.endpoint.rpartition(":")[2]
        own_addresses |= {f"tcp://{i.address}:{port}" for i in interfaces}
    targets, more = _targets(joins, local, data, members, sightings, own_addresses)
    problems += more

    transport = None
    if local.identity is not None and local.membership is not None:
        identity, credential = local.identity, local.membership.certificate
        try:  # the key this device's certificate names, so members accept our ping
            transport = TransportKeys.load(data.transport_key)
        except (IdentityError, OSError):
            transport = None
    else:
        identity = Identity.generate()
        credential = self_credential(identity)
    ctx = zmq.asyncio.Context()
    try:
        probes = await asyncio.gather(*(
            probe(t, ctx=ctx, identity=identity, credential=credential, timeout_s=timeout_s, transport=transport,
                  clock=clock)
            for t in targets
        ))
    finally:
        ctx.term()
    view = LocalView(
        peer_id=own_id,
        mesh=local.membership.mesh_id_text if local.membership else None,
        running=local.peer is not None,
        advertise=advertise,
        interfaces=interfaces,
        problems=tuple(problems),
        mdns_error=mdns_error,
        mdns_browsed_s=0.0 if mdns_error else wait_s,
    )
    engine = await _local_engine(data, timeout_s, local.peer is not None)
    return Observations(view, tuple(sightings), tuple(probes), dict(dropped), tuple(others), engine)
