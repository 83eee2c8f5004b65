"""The addresses a peer tells others to reach it at."""

from __future__ import annotations

import ipaddress
import socket

import psutil


def interface_ips() -> list[str]:
    """Non-loopback, non-link-local IPv4 addresses of interfaces that are up."""
    stats = psutil.net_if_stats()
    ips = []
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(a.address)
            if ip.is_loopback or ip.is_link_local:
                continue
            ips.append(a.address)
    return sorted(set(ips))


def advertise_endpoints(bind_host: str, port: int, *, explicit: tuple[str, ...] = ()) -> list[str]:
    """``tcp://ip:port`` endpoints: the explicit ones, else the bound address, else (for a
    wildcard bind) every usable interface address, else loopback."""
    if explicit:
        return [e if e.startswith("tcp://") else f"tcp://{e}" for e in explicit]
    if bind_host not in ("0.0.0.0", "", "*", "::"):
        return [f"tcp://{bind_host}:{port}"]
    ips = interface_ips()
    return [f"tcp://{ip}:{port}" for ip in ips] or [f"tcp://127.0.0.1:{port}"]
