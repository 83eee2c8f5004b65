"""The findings of ``mesh doctor`` as text for a terminal, or as one JSON document."""

from __future__ import annotations

import textwrap
from typing import Any

from mesh.doctor.findings import has_problem
from mesh.doctor.model import Finding, Observations, Reach

_MARK = {"error": "ERROR", "warning": "WARN ", "info": "info "}


def summary(obs: Observations) -> str:
    ok = sum(1 for p in obs.probes if p.rpc == "ok")
    refused = sum(1 for p in obs.probes if p.tcp is not Reach.OPEN)
    heard = len({s.peer_id for s in obs.sightings} - {obs.local.peer_id})
    mesh = obs.local.mesh or "none"
    peer = "running" if obs.local.running else "not running"
    mdns = f"{heard} other peer(s) heard over mDNS in {obs.local.mdns_browsed_s:g} s" if not obs.local.mdns_error \
        else "mDNS unavailable"
    return (f"mesh {mesh}; local peer {peer}; {len(obs.probes)} address(es) probed: {ok} answered, "
            f"{refused} not reachable; {mdns}")


def text_report(findings: list[Finding], obs: Observations, *, width: int = 100) -> str:
    lines = [summary(obs), ""]
    if not has_problem(findings):
        lines.append("no problems found")
        if findings:
            lines.append("")
    for f in findings:
        lines.append(f"{_MARK[f.severity.value]} {f.code}: {f.subject}")
        for label, body in (("seen", f.seen), ("next", f.next)):
            wrapped = textwrap.wrap(body, width=width - 12) or [""]
            lines.append(f"      {label}: {wrapped[0]}")
            lines += [f"            {w}" for w in wrapped[1:]]
    return "\n".join(lines).rstrip()


def json_report(findings: list[Finding], obs: Observations) -> dict[str, Any]:
    return {
        "ok": not has_problem(findings),
        "summary": summary(obs),
        "findings": [f.to_dict() for f in findings],
        "local": {
            "peer_id": obs.local.peer_id, "mesh": obs.local.mesh, "running": obs.local.running,
            "advertise": list(obs.local.advertise),
            "interfaces": [{"name": i.name, "address": i.address, "prefixlen": i.prefixlen}
                           for i in obs.local.interfaces],
        },
        "mdns": {
            "error": obs.local.mdns_error, "listened_s": obs.local.mdns_browsed_s,
            "records": [{"peer_id": s.peer_id, "mesh": s.mesh, "version": s.version, "addresses": list(s.addresses),
                         "port": s.port} for s in obs.sightings],
            "dropped": dict(obs.dropped_records),
        },
        "probes": [{
            "address": p.target.address, "sources": list(p.target.sources), "tcp": p.tcp.value, "ip": p.ip,
            "detail": p.detail, "rpc": p.rpc, "message": p.message, "peer_id": p.peer_id, "mesh": p.mesh,
            "remote_time": p.remote_time,
        } for p in obs.probes],
    }
