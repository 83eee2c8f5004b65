"""How many times each durable job was really generated, read from the peers' own logs.

A job runner (``mesh.jobs.runner``) logs ``job ID: generating on PEER`` when text for a
job starts to come from PEER (a peer id, or ``cloud``). The job store keeps one row per
idempotency key whatever happens, so counting rows cannot show a job run twice; these
lines can. A second generation of a job is *explained* when the peer that ran the
previous one (the runner, whose log holds the line, or the generating peer) was killed
(or cut off, rotated: whatever ``faults`` lists) between that generation's start and the
next one's; any other is a duplicate execution. (A fault of an earlier generation's peer
explains every later one: after a kill of the executor the owner may run the job again
while the restarted executor also runs its durable copy; those extra generations are
counted apart, ``reexecuted_beyond_one_per_fault``.)

Log lines carry the local time of day (``HH:MM:SS.mmm``, ``mesh.cli.common``); fault
times are given as ``time.time()`` and compared on the same clock. Runs crossing
midnight are not handled.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

GENERATING = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*\bjob (\S+): generating on (\S+)")
IDS = re.compile(r"mesh-peer ready: peer (\S+) \(|keys rotated: peer \S+ is now (\S+) ")
SLACK_S = 1.0  # log stamps and fault times are taken by different processes


@dataclass(frozen=True)
class Generation:
    job_id: str
    at: float  # seconds since local midnight
    runner: str  # the host whose log holds the line
    peer: str  # the generating peer's host name where known, else its id (or "cloud")


@dataclass(frozen=True)
class Fault:
    host: str
    t0: float  # time.time() when it began ...
    t1: float  # ... and ended


def day_s(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def local_day_s(t: float) -> float:
    d = datetime.datetime.fromtimestamp(t)
    return d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6


def peer_ids(logs: dict[str, str]) -> dict[str, str]:
    """Peer id -> host name, from each log's "mesh-peer ready" and "keys rotated" lines
    (every id a host went by, across restarts and key rotations)."""
    return {m.group(1) or m.group(2): host for host, text in logs.items() for m in IDS.finditer(text)}


def generations(logs: dict[str, str], names: dict[str, str] | None = None) -> list[Generation]:
    """Every generation start in ``logs`` (host name -> its whole log text), in time order."""
    names = peer_ids(logs) if names is None else names
    out = []
    for host, text in logs.items():
        for line in text.splitlines():
            m = GENERATING.match(line)
            if m:
                out.append(Generation(m.group(2), day_s(m.group(1)), host, names.get(m.group(3), m.group(3))))
    return sorted(out, key=lambda g: g.at)


def verdict(gens: list[Generation], faults: list[Fault], *, owners: dict[str, str], job_ids: list[str]) -> dict:
    """Executions per job: ``job_ids`` are the jobs that should have run, ``owners`` maps
    a job id to the host it was submitted to. Returns the figures (see the module doc)."""
    by_job: dict[str, list[Generation]] = {j: [] for j in job_ids}
    for g in gens:
        if g.job_id in by_job:
            by_job[g.job_id].append(g)
    spans = [(f.host, local_day_s(f.t0) - SLACK_S, local_day_s(f.t1) + SLACK_S) for f in faults]

    def faults_of(g: Generation, until: float) -> set[int]:
        """The faults of ``g``'s runner or generating peer after ``g`` began and before ``until``."""
        return {k for k, (h, start, end) in enumerate(spans)
                if h in (g.runner, g.peer) and start <= until and end >= g.at}

    explained = unexplained = beyond = 0
    duplicates: list[dict] = []
    for job_id, runs in by_job.items():
        causes: set[int] = set()
        unexplained_here = 0
        for i, nxt in enumerate(runs[1:], 1):
            why = set().union(*(faults_of(prev, nxt.at) for prev in runs[:i]))
            if why:
                explained += 1
                causes |= why
            else:
                unexplained += 1
                unexplained_here += 1
                prev = runs[i - 1]
                duplicates.append({"job": job_id, "first": (prev.runner, prev.peer), "again": (nxt.runner, nxt.peer)})
        # one kill can cost two generations: the owner takes the job back while the
        # restarted executor runs its own durable copy again (only one result is stored)
        beyond += max(0, len(runs) - 1 - unexplained_here - len(causes))
    return {
        "executions": dict(sorted(Counter(len(r) for r in by_job.values()).items())),
        "never_ran": sum(1 for r in by_job.values() if not r),
        "reexecuted_after_fault": explained,
        "reexecuted_unexplained": unexplained,
        "reexecuted_beyond_one_per_fault": beyond,
        "duplicate_examples": duplicates[:5],
        # moved: it ran (at least once) on a peer other than the one it was submitted to
        "moved": sum(1 for j, r in by_job.items() if any(g.peer != owners.get(j) for g in r)),
    }


def read_logs(paths: dict[str, Path]) -> dict[str, str]:
    return {host: p.read_text(errors="replace") if p.exists() else "" for host, p in paths.items()}
