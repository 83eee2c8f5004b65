"""The rules of ``mesh doctor``: observations in, findings out. Pure: no sockets, no clock.

One function per cause; ``diagnose`` runs them all and sorts the result (errors first).
Each finding says what was seen and what to do next, in words an operator can act on;
docs/operations.md explains every code.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import defaultdict

from mesh.doctor.engine import engine_findings
from mesh.doctor.model import Finding, Observations, Probe, Reach, Severity

MDNS_FIX = ("multicast is blocked between you and {who} (a firewall dropping 5353/udp, Wi-Fi AP/client "
            "isolation, or IGMP snooping without a querier), or {who} runs with --no-mdns; fix that, or name the "
            "peer directly: mesh-peer --join {addr} (or join = [\"{addr}\"] in mesh.toml)")
_STALE = re.compile(r"timestamp ([+-]?\d{1,12}(?:\.\d{1,6})?)s from this peer's clock")
_REFUSED_MESH = {"rejected:bad_credential", "rejected:unknown_sender", "unauthenticated"}


def diagnose(obs: Observations, *, window_s: float, versions: range) -> list[Finding]:
    """Every finding for these observations, errors first, then by code and subject."""
    out: list[Finding] = []
    out += _membership(obs)
    out += _mdns_sightings(obs, versions=versions)
    out += _duplicates(obs)
    for p in obs.probes:
        out += _probe(obs, p, window_s=window_s, versions=versions)
    out += _multicast(obs)
    out += _interfaces(obs)
    out += engine_findings(obs.engine)
    unique = list(dict.fromkeys(out))
    return sorted(unique, key=lambda f: (f.severity.rank, f.code, f.subject))


def has_problem(findings: list[Finding]) -> bool:
    return any(f.severity in (Severity.ERROR, Severity.WARNING) for f in findings)


# -- helpers ---------------------------------------------------------------------------


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def _local_ips(obs: Observations) -> set[str]:
    return {i.address for i in obs.local.interfaces}


def _advertised_ips(obs: Observations) -> list[str]:
    out = []
    for a in obs.local.advertise:
        host = a.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        if _ip(host) is not None:
            out.append(host)
    return out


def _probe_ip(p: Probe) -> str | None:
    return p.ip or (p.target.host_port[0] if _ip(p.target.host_port[0]) else None)


def _same_mesh_ok(obs: Observations, p: Probe) -> bool:
    return p.rpc == "ok" and (obs.local.mesh is None or p.mesh in (None, obs.local.mesh))


def _who(p: Probe) -> str:
    return p.target.label


def _join_arg(p: Probe) -> str:
    host, port = p.target.host_port
    ip = p.ip or host
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def skew_s(p: Probe) -> float | None:
    """The remote clock minus ours, in seconds, from a ping reply (midpoint of the call)
    or from a stale-timestamp refusal's message; None when neither tells."""
    if p.rpc == "ok" and p.remote_time is not None and p.sent_at is not None and p.received_at is not None:
        return p.remote_time - (p.sent_at + p.received_at) / 2
    if p.rpc == "rejected:stale_timestamp":
        m = _STALE.search(p.message)
        if m:
            ours_minus_theirs = float(m.group(1))
            return -ours_minus_theirs if math.isfinite(ours_minus_theirs) else None
    return None


# -- the rules -------------------------------------------------------------------------


def _membership(obs: Observations) -> list[Finding]:
    out = []
    if obs.local.mesh is None:
        out.append(Finding(
            "no_membership", Severity.WARNING, "this device",
            "this data dir holds no mesh.json: the device is in no mesh yet, so every peer refuses it",
            "on the first device run `mesh init`; on the others `mesh-peer --join-token TOKEN` with a token "
            "from `mesh invite`"))
    if not obs.local.running:
        out.append(Finding(
            "no_local_peer", Severity.INFO, "this device",
            "no mesh-peer is running for this data dir (no live peer.json), so only the addresses given, "
            "known_peers.json, mesh.json seeds and mDNS were checked",
            "start mesh-peer, then run `mesh doctor` again to check how it is reached"))
    for problem in obs.local.problems:
        out.append(Finding("local_state", Severity.INFO, "this device", problem, "see the message; fix or ignore"))
    if obs.local.mdns_error:
        out.append(Finding(
            "mdns_unavailable", Severity.WARNING, "this host",
            f"cannot listen for mDNS here: {obs.local.mdns_error}",
            "check that the host has an IPv4 interface that is up and that 5353/udp can be bound; "
            "meanwhile reach peers with --join HOST:PORT"))
    return out


def _mdns_sightings(obs: Observations, *, versions: range) -> list[Finding]:
    out = []
    ours = obs.local.mesh
    expected = {pid for p in obs.probes if set(p.target.sources) - {"mdns"} for pid in (p.target.peer_id, p.peer_id)}
    expected.discard(None)
    for s in obs.sightings:
        where = f"{', '.join(s.addresses)}:{s.port}"
        subject = f"{where} (peer {s.peer_id[:12]})"
        if s.version not in versions:
            out.append(Finding(
                "version_mismatch", Severity.ERROR, subject,
                f"it announces protocol version {s.version}; this build speaks "
                f"{versions.start}..{versions.stop - 1}",
                "run the same mesh release on every device (upgrade the older one)"))
        if ours is not None and s.mesh != ours and s.peer_id != obs.local.peer_id:
            if s.peer_id in expected:
                out.append(Finding(
                    "other_mesh", Severity.ERROR, subject,
                    f"a peer you expect in your mesh announces mesh {s.mesh}, not yours ({ours})",
                    "it was enrolled in another mesh (or re-initialised with `mesh init`); on it, remove mesh.json "
                    "and join yours with a token from `mesh invite`"))
            else:
                out.append(Finding(
                    "other_mesh_nearby", Severity.INFO, subject,
                    f"a peer of another mesh ({s.mesh}) is on this LAN; yours is {ours}; it is ignored",
                    "nothing, unless it should be in your mesh: then enrol it with a token from `mesh invite`"))
    return out


def _duplicates(obs: Observations) -> list[Finding]:
    """The same peer id from two places: a data dir copied to a second machine."""
    out = []
    local = _local_ips(obs)
    own = obs.local.peer_id
    by_id: dict[str, set[str]] = defaultdict(set)  # peer id -> addresses announced over mDNS
    records: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for s in obs.sightings:
        by_id[s.peer_id].update(s.addresses)
        records[s.peer_id].add(tuple(sorted(s.addresses)))
    for p in obs.probes:
        ip = _probe_ip(p)
        if p.rpc == "ok" and p.peer_id == own and own is not None and ip and ip not in local and not _is_loopback(ip):
            out.append(Finding(
                "duplicate_peer_id", Severity.ERROR, _who(p),
                f"the peer at {ip} answers with this device's own peer id {own[:12]}",
                "two machines share one identity (a copied data dir); on the copy, stop mesh-peer, delete "
                "identity.key and mesh.json, and join again with a token from `mesh invite`"))
    for peer_id, addrs in by_id.items():
        if peer_id == own:
            foreign = sorted(a for a in addrs if a not in local and not _is_loopback(a))
            if foreign:
                out.append(Finding(
                    "duplicate_peer_id", Severity.ERROR, f"peer {peer_id[:12]}",
                    f"another host ({', '.join(foreign)}) announces this device's own peer id over mDNS",
                    "two machines share one identity (a copied data dir); on the copy, stop mesh-peer, delete "
                    "identity.key and mesh.json, and join again with a token from `mesh invite`"))
        elif len(records[peer_id]) > 1 and _disjoint(records[peer_id]):
            out.append(Finding(
                "duplicate_peer_id", Severity.ERROR, f"peer {peer_id[:12]}",
                f"peer id {peer_id[:12]} is announced from different hosts: "
                + "; ".join(", ".join(r) for r in sorted(records[peer_id])),
                "two machines share one identity (a copied data dir); on one of them, stop mesh-peer, delete "
                "identity.key and mesh.json, and join again with a token from `mesh invite`"))
    # one id answering at two addresses that its own announcement does not list
    answered: dict[str, list[Probe]] = defaultdict(list)
    for p in obs.probes:
        if p.rpc == "ok" and p.peer_id and p.peer_id != own:
            answered[p.peer_id].append(p)
    for peer_id, probes in answered.items():
        ips = {_probe_ip(p) for p in probes} - {None}
        known = by_id.get(peer_id, set())
        if len(ips) > 1 and known and not ips <= known:
            out.append(Finding(
                "duplicate_peer_id", Severity.WARNING, f"peer {peer_id[:12]}",
                f"peer id {peer_id[:12]} answers at {', '.join(sorted(ips))} but announces only "
                f"{', '.join(sorted(known))}",
                "if these are two machines, one has a copy of the other's data dir: give it its own "
                "identity (delete identity.key and mesh.json there, then join again)"))
    return out


def _disjoint(records: set[tuple[str, ...]]) -> bool:
    sets = [set(r) for r in records]
    return any(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])


def _is_loopback(ip: str) -> bool:
    addr = _ip(ip)
    return bool(addr and addr.is_loopback)


def _probe(obs: Observations, p: Probe, *, window_s: float, versions: range) -> list[Finding]:
    who = _who(p)
    host, port = p.target.host_port
    if p.tcp is Reach.REFUSED:
        return [Finding(
            "port_closed", Severity.ERROR, who,
            f"TCP connect to {host}:{port} was refused: nothing listens there ({p.detail or 'connection refused'})",
            f"is mesh-peer running on {host}? Check its --rpc-port (default 7411), and that it listens on the LAN "
            "(--rpc-host 0.0.0.0), not only on 127.0.0.1")]
    if p.tcp is Reach.TIMEOUT:
        return [Finding(
            "port_closed", Severity.ERROR, who,
            f"TCP connect to {host}:{port} got no answer ({p.detail or 'timed out'}): a firewall drops it, "
            "or the host is down",
            f"open {port}/tcp on {host}'s firewall (e.g. `ufw allow {port}/tcp`, "
            f"`firewall-cmd --add-port={port}/tcp`), and check the host is up")]
    if p.tcp is Reach.UNREACHABLE:
        return [Finding(
            "unreachable", Severity.ERROR, who,
            f"cannot reach {host}: {p.detail or 'no route'}",
            "check the address (and the name, if it is one), that this host has a route to it, and the cable/Wi-Fi")]
    ours = obs.local.mesh
    if p.rpc in ("bad_version", "rejected:bad_version"):
        return [Finding(
            "version_mismatch", Severity.ERROR, who,
            f"it speaks another protocol version ({p.message or 'its frames use an unsupported version'}); "
            f"this build speaks {versions.start}..{versions.stop - 1}",
            "run the same mesh release on every device (upgrade the older one)")]
    if p.rpc == "rejected:stale_timestamp" or (p.rpc == "ok" and skew_s(p) is not None):
        skew = skew_s(p)
        if skew is not None and abs(skew) > window_s:
            return [_skew(p, skew, window_s, Severity.ERROR, refused=p.rpc != "ok")]
        if skew is None and p.rpc == "rejected:stale_timestamp":
            return [_skew(p, None, window_s, Severity.ERROR, refused=True)]
        if skew is not None and abs(skew) > window_s / 2:
            return [_skew(p, skew, window_s, Severity.WARNING, refused=False)]
    if p.mesh is not None and ours is not None and p.mesh != ours:
        return [Finding(
            "other_mesh", Severity.ERROR, who,
            f"the peer there belongs to mesh {p.mesh}, not yours ({ours}); it refuses your frames",
            "it was enrolled in (or created) another mesh; on it, remove mesh.json and join yours with a "
            "token from `mesh invite`, or point --join at a member of your mesh")]
    if p.rpc in _REFUSED_MESH:
        if ours is None:
            what, fix = "this device is in no mesh", "join the mesh first: `mesh-peer --join-token TOKEN`"
        else:
            what = "it does not accept this device's certificate"
            fix = ("check both are in the same mesh (`mesh status`); if this device was re-enrolled or the mesh "
                   "re-created, join again with a token from `mesh invite`")
        return [Finding("not_member", Severity.ERROR, who, f"the peer refused us ({p.rpc}): {what}", fix)]
    if p.rpc == "no_transport_key":
        return [Finding(
            "transport_key_unknown", Severity.INFO, who,
            f"{host}:{port} accepts TCP connections, but no source gave its transport key, so it was not pinged "
            "(connections are encrypted to that key)",
            f"run `mesh status` on that peer and use the 'join here with' value: --join {host}:{port}@KEY")]
    if p.rpc == "no_reply":
        return [Finding(
            "no_reply", Severity.WARNING, who,
            f"{host}:{port} accepts TCP connections but did not answer a signed ping",
            f"check that mesh-peer (not another program) listens on {port} there, and its log for refused frames "
            "(`mesh info` there shows refusals by reason)")]
    if p.rpc not in (None, "ok"):
        return [Finding("rpc_error", Severity.WARNING, who, f"ping failed: {p.rpc}: {p.message}",
                        "see the message; `mesh info` on that peer shows its state")]
    if p.rpc == "ok" and p.target.peer_id and p.peer_id and p.peer_id != p.target.peer_id:
        return [Finding(
            "address_reused", Severity.INFO, who,
            f"expected peer {p.target.peer_id[:12]} there, but {p.peer_id[:12]} answered",
            "nothing if that device was re-enrolled; stale addresses in known_peers.json are replaced as gossip "
            "learns the new ones")]
    return []


def _skew(p: Probe, skew: float | None, window_s: float, severity: Severity, *, refused: bool) -> Finding:
    if skew is None:
        seen = "the peer refused our frames as outside its clock window"
    else:
        side = "ahead of" if skew > 0 else "behind"
        seen = f"its clock is {abs(skew):.1f} s {side} this one"
    seen += f" (the replay window is ±{window_s:g} s)"
    if refused:
        seen += "; it refuses our frames"
    elif severity is Severity.WARNING:
        seen += "; frames still pass, but a little more drift will make peers refuse each other"
    return Finding("clock_skew", severity, _who(p), seen,
                   "synchronise clocks with NTP on both devices (`timedatectl set-ntp true`, chrony or systemd-timesyncd)")


def _multicast(obs: Observations) -> list[Finding]:
    """Peers that answer over TCP, of our mesh, but were never heard over mDNS."""
    if obs.local.mdns_error is not None or obs.local.mdns_browsed_s <= 0:
        return []
    heard = {s.peer_id for s in obs.sightings}
    local_nets = [i.network for i in obs.local.interfaces if not _is_loopback(i.address)]
    member_alive = {m.peer_id for m in obs.members if m.state == "alive"}
    out = []
    done: set[str] = set()
    for p in obs.probes:
        if not _same_mesh_ok(obs, p) or not p.peer_id or p.peer_id == obs.local.peer_id or p.peer_id in heard:
            continue
        if p.peer_id in done:
            continue
        done.add(p.peer_id)
        ip = _ip(_probe_ip(p))
        who, addr = _who(p), _join_arg(p)
        if ip is not None and ip.is_loopback:
            continue
        if ip is not None and not any(ip in net for net in local_nets):
            out.append(Finding(
                "other_subnet", Severity.INFO, who,
                f"it answers over TCP but is on another subnet ({ip}); mDNS does not cross routers",
                f"keep it in --join {addr} (or join = [\"{addr}\"] in mesh.toml)"))
            continue
        joined = "join" in p.target.sources or "seed" in p.target.sources or p.peer_id in member_alive
        seen = (f"it answers over TCP at {addr}, on your subnet, but was not heard over mDNS in "
                f"{obs.local.mdns_browsed_s:g} s")
        if joined:
            seen += " (it is reached through --join or gossip, so the mesh works, but new devices will not find it)"
        out.append(Finding("multicast_blocked", Severity.WARNING if joined else Severity.ERROR, who, seen,
                           MDNS_FIX.format(who=who, addr=addr)))
    return out


def _interfaces(obs: Observations) -> list[Finding]:
    """Our peer listens or advertises where the others cannot reach it."""
    if not obs.local.running:
        return []
    advertised = _advertised_ips(obs)
    peer_ips: dict[str, str] = {}  # ip -> label
    for p in obs.probes:
        ip = _probe_ip(p)
        if ip and p.tcp is Reach.OPEN and p.peer_id != obs.local.peer_id:
            peer_ips.setdefault(ip, _who(p))
    for s in obs.sightings:
        if s.mesh == obs.local.mesh and s.peer_id != obs.local.peer_id:
            for a in s.addresses:
                peer_ips.setdefault(a, f"{a}:{s.port} (peer {s.peer_id[:12]})")
    lan_peers = {ip: who for ip, who in peer_ips.items() if _ip(ip) is not None and not _is_loopback(ip)}
    out = []
    if advertised and all(_is_loopback(a) for a in advertised):
        if lan_peers:
            first = sorted(lan_peers)[0]
            out.append(Finding(
                "loopback_only", Severity.ERROR, "this peer",
                f"it listens and advertises only on {', '.join(obs.local.advertise)}, while other peers are on the "
                f"LAN (e.g. {lan_peers[first]})",
                "restart mesh-peer with --rpc-host 0.0.0.0 (or rpc-host = \"0.0.0.0\" in mesh.toml) so the others "
                "can reach it"))
        return out
    local = _local_ips(obs)
    for a in advertised:
        if a not in local and not _is_loopback(a):
            out.append(Finding(
                "wrong_interface", Severity.WARNING, "this peer",
                f"it advertises {a}, which is not an address of this host (interfaces: "
                f"{', '.join(sorted(local - {'127.0.0.1'})) or 'none'})",
                "fix --advertise (or advertise in mesh.toml), or drop it to advertise the interfaces' addresses"))
    nets = [(i, i.network) for i in obs.local.interfaces if not _is_loopback(i.address)]
    adv = [_ip(a) for a in advertised]
    for ip_text, who in sorted(lan_peers.items()):
        ip = _ip(ip_text)
        assert ip is not None
        on = [(i, net) for i, net in nets if ip in net]
        if not on:
            continue
        if not any(a is not None and a in net for _, net in on for a in adv):
            iface, net = on[0]
            out.append(Finding(
                "wrong_interface", Severity.ERROR, "this peer",
                f"{who} is on {net} (interface {iface.name}, address {iface.address}), but this peer advertises "
                f"only {', '.join(advertised)}; peers there cannot reach it",
                f"advertise the address on that subnet: --advertise {iface.address}:PORT, or listen on every "
                "interface with --rpc-host 0.0.0.0 and no --advertise"))
    return out
