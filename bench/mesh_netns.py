"""Membership timings on real hosts: one mesh-peer per network namespace (root needed).

    .venv/bin/python bench/mesh_netns.py [--peers 6] [--kills 2] [--idle-s 600] [--loss 0.05]

1. Join: peers enrol one by one (token + mDNS, no --join); for each, the time from its
   "ready" log line until every other peer has logged it alive. Target < 3 s.
2. Failure: kill -9 of a peer; time until every other peer has logged it dead.
   Target < 6 s with default settings (a mesh of up to 16).
3. Idle with loss: a fresh mesh whose every peer drops --loss of its gossip (seeded
   fault layer), left alone for --idle-s seconds; counts suspicions and (false) deaths.
   Target: no false deaths over 10 minutes at 5% loss.

Times come from the peers' own log lines (millisecond stamps, one machine clock).
Prints a report, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import netns  # noqa: E402
from support.meshhosts import Host, wait_until  # noqa: E402

EVENT = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*member (\S+) \(\w+\): (\S+) -> (\S+)")
SERVING = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) INFO\s+(joined mesh|ready: )")  # model loaded


def say(msg: str) -> None:
    print(msg, flush=True)


def day_seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def to_day_seconds(t: float) -> float:
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t % 1)


def now_day_seconds() -> float:
    return to_day_seconds(time.time())


def events(host: Host) -> list[tuple[float, str, str, str]]:
    out = []
    for line in host.log.read_text(errors="replace").splitlines():
        m = EVENT.match(line)
        if m:
            out.append((day_seconds(*m.groups()[:4]), m.group(5), m.group(6), m.group(7)))
    return out


def serving_at(host: Host) -> float:
    """When the peer was enrolled and its model loaded: gossip starts right after."""
    times = [day_seconds(*m.groups()[:4]) for line in host.log.read_text().splitlines() if (m := SERVING.match(line))]
    return max(times)


def first(host: Host, name: str, new: str, after: float) -> float | None:
    ts = [t for t, n, _, to in events(host) if n == name and to == new and t >= after]
    return min(ts) if ts else None


def all_logged(others, name, new, after):
    ts = [first(h, name, new, after) for h in others]
    return None if any(t is None for t in ts) else max(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=6)
    p.add_argument("--kills", type=int, default=2)
    p.add_argument("--idle-s", type=float, default=600.0)
    p.add_argument("--loss", type=float, default=0.05)
    args = p.parse_args()
    reason = netns.available()
    if reason:
        sys.exit(f"cannot run: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="mesh-netns-bench-"))
    figures: dict = {"bench": "mesh_netns", "peers": args.peers}

    with netns.Lab(args.peers) as lab:
        hosts = [Host(lab[i], tmp / "a", f"h{i}") for i in range(args.peers)]
        say(f"1. join: {args.peers} peers, one at a time (token + mDNS)")
        hosts[0].start()
        joins, from_launch = [], []
        for h in hosts[1:]:
            token = hosts[0].invite()
            h.start("--join-token", token)
            launched = to_day_seconds(h.launched_at)
            others = [x for x in hosts if x.proc is not None and x is not h]
            wait_until(lambda o=others, h=h, t=launched: all_logged(o, h.name, "alive", t) is not None, f"{h.name} listed", 60)
            listed = all_logged(others, h.name, "alive", launched)
            serving = serving_at(h)
            joins.append(listed - serving)
            from_launch.append(listed - launched)
            say(f"   {h.name}: listed by all {len(others)} others {joins[-1]:.2f} s after it began serving "
                f"({from_launch[-1]:.2f} s after the process started, model load and enrolment included)")
        figures["join_s_median"] = round(statistics.median(joins), 3)
        figures["join_s_max"] = round(max(joins), 3)
        figures["join_from_launch_s_median"] = round(statistics.median(from_launch), 3)

        say(f"2. failure: kill -9 of {args.kills} peers")
        deaths, suspects = [], []
        for victim in hosts[-args.kills:]:
            t0 = now_day_seconds()
            victim.kill9()
            others = [x for x in hosts if x.proc is not None and x.proc.poll() is None]
            wait_until(lambda o=others, v=victim, t=t0: all_logged(o, v.name, "dead", t) is not None, f"{victim.name} dead", 60)
            dead = all_logged(others, victim.name, "dead", t0) - t0
            susp = all_logged(others, victim.name, "suspect", t0)
            deaths.append(dead)
            suspects.append(None if susp is None else susp - t0)
            say(f"   {victim.name}: all others marked it dead {dead:.2f} s after kill -9"
                + (f" (suspect after {susp - t0:.2f} s)" if susp else ""))
        figures["dead_s_median"] = round(statistics.median(deaths), 3)
        figures["dead_s_max"] = round(max(deaths), 3)
        for h in hosts:
            h.stop()

    if args.idle_s > 0:
        with netns.Lab(args.peers) as lab:
            hosts = [Host(lab[i], tmp / "b", f"i{i}") for i in range(args.peers)]
            loss = ["--fault-loss", str(args.loss)]
            hosts[0].start(*loss, "--fault-seed", "0")
            for i, h in enumerate(hosts[1:], 1):
                h.start("--join-token", hosts[0].invite(), *loss, "--fault-seed", str(i))
            wait_until(lambda: all(len(h.states()) == args.peers for h in hosts), "idle mesh formed", 90)
            t0 = now_day_seconds()
            say(f"3. idle: {args.peers} peers, {args.loss:.0%} gossip loss each way out, {args.idle_s:.0f} s")
            step = max(10.0, args.idle_s / 10)
            end = time.monotonic() + args.idle_s
            while time.monotonic() < end:
                time.sleep(min(step, max(0.0, end - time.monotonic())))
                evs = [e for h in hosts for e in events(h) if e[0] >= t0]
                say(f"   {args.idle_s - max(0, end - time.monotonic()):.0f} s: "
                    f"{sum(1 for e in evs if e[3] == 'suspect')} suspicions, "
                    f"{sum(1 for e in evs if e[3] == 'dead')} deaths")
            evs = [e for h in hosts for e in events(h) if e[0] >= t0]
            figures["idle_s"] = args.idle_s
            figures["idle_loss"] = args.loss
            figures["idle_suspicions"] = sum(1 for e in evs if e[3] == "suspect")
            figures["idle_false_deaths"] = sum(1 for e in evs if e[3] == "dead")
            dropped = sum((json.loads(h.mesh("status", "--json").stdout).get("faults") or {}).get("dropped", 0)
                          for h in hosts)
            figures["idle_messages_dropped"] = dropped
            for h in hosts:
                h.stop()

    say("\nsummary")
    say(f"   join: median {figures['join_s_median']:.2f} s, max {figures['join_s_max']:.2f} s (target < 3 s)")
    say(f"   kill -9 -> dead everywhere: median {figures['dead_s_median']:.2f} s, max {figures['dead_s_max']:.2f} s"
        " (target < 6 s)")
    if "idle_false_deaths" in figures:
        say(f"   idle {figures['idle_s']:.0f} s at {figures['idle_loss']:.0%} loss: "
            f"{figures['idle_false_deaths']} false deaths, {figures['idle_suspicions']} suspicions "
            f"({figures['idle_messages_dropped']} messages dropped)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
