"""Chaos on simulated hosts (network namespaces, real mesh-peer processes, the real model;
root needed): while a client on h0 keeps asking (each ask with a 20 s deadline) and
submitting durable jobs, the other peers are killed with SIGKILL and restarted, stalled
with SIGSTOP for less than the suspicion timeout, and cut off (link down) and restored,
and every peer drops --loss of its gossip (seeded fault layer). With --rotate, some of
the faults are `mesh rotate` on a peer instead (new keys and peer id while it works).
h0, the entry peer, runs ``--no-model``: every ask and every job is served by one of the
peers under fault, never by the one the client talks to.

    .venv/bin/python bench/chaos.py [--peers 4] [--duration 300] [--jobs 60] [--seed 1] [--rotate]

Checks, reported (and asserted by tests/netns/test_netns_chaos.py at a small size):
- every ask ended with an answer or a clear, typed error (busy, no answer, unavailable,
  deadline) by its deadline (``late``: ended more than LATE_MARGIN_S after it) — none
  hung, none failed with an untyped error; every answer came from a peer other than h0;
- every job completed, with a result, and was generated once — again only after the
  peer that generated it was killed, cut off or rotated in between (counted from the
  peers' logs, tests/support/joblog.py; ``jobs_reexecuted_unexplained`` must be 0);
- no peer was declared dead by another while merely stalled (SIGSTOP) for less than the
  suspicion timeout;
- every `mesh rotate` finished.
Prints a report, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from support import joblog, netns  # noqa: E402
from support.meshhosts import Host, wait_until  # noqa: E402

CLIENT = str(TESTS / "support" / "chaos_client.py")
DEAD = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*member (\S+) \(\w+\): \S+ -> dead")
STALL_S = (0.3, 0.7)  # SIGSTOP lengths: below the LAN suspicion timeout (>= 1 s for 4 peers)
LATE_MARGIN_S = 2.0  # an ask that ends this long after its deadline broke the deadline's promise
FAULTS_THAT_MAY_REPEAT_A_JOB = {"kill", "link", "rotate", "rotate_failed"}  # not a stall: shorter than suspicion


def say(msg: str) -> None:
    print(msg, flush=True)


def start_mesh(lab, root: Path, n: int, loss: float) -> list[Host]:
    hosts = [Host(lab[i], root, f"h{i}") for i in range(n)]
    faults = lambda i: ("--fault-loss", str(loss), "--fault-seed", str(100 + i)) if loss else ()  # noqa: E731
    hosts[0].start("--no-model", *faults(0))  # the entry peer: it routes every prompt elsewhere
    for i, h in enumerate(hosts[1:], 1):
        h.start("--join-token", hosts[0].invite(), *faults(i))
    wait_until(lambda: all(len(h.states()) == n and set(h.states().values()) == {"alive"} for h in hosts),
               f"mesh of {n}", 90)
    # the entry peer routes on what gossip told it: wait until it sees every other peer's model
    wait_until(lambda: all(m.get("meta", {}).get("models") for name, m in hosts[0].peers().items() if name != "h0")
               and len(hosts[0].peers()) == n, "models gossiped to the entry peer", 60)
    return hosts


def chaos(lab, hosts: list[Host], rng: random.Random, duration_s: float, events: list, *,
          rotate: bool = False) -> None:
    """Faults on h1.. for ``duration_s``; h0 (the client's peer, holding the authority
    key) is left alone. With ``rotate``, some events are ``mesh rotate`` on a peer."""
    end = time.monotonic() + duration_s
    victims = hosts[1:]
    while time.monotonic() < end:
        time.sleep(rng.uniform(2.0, 5.0))
        h = rng.choice(victims)
        kind = rng.choice(["kill", "stall", "stall", "link", *(["rotate"] if rotate else [])])
        t0 = time.time()
        if kind == "rotate":
            r = h.mesh("rotate", "--json", "--wait", "30", check=False)
            if r.returncode != 0:
                kind = "rotate_failed"
                say(f"  mesh rotate on {h.name} failed: {r.stderr.strip()[-300:]}")
        elif kind == "kill":
            h.kill9()
            time.sleep(rng.uniform(1.0, 3.0))
            h.start()  # (without --no-model: it serves the model again)
        elif kind == "stall":
            stall = rng.uniform(*STALL_S)
            h.proc.send_signal(signal.SIGSTOP)
            time.sleep(stall)
            h.proc.send_signal(signal.SIGCONT)
        else:
            lab.link_down(h.ns)
            time.sleep(rng.uniform(2.0, 4.0))
            lab.link_up(h.ns)
        events.append({"kind": kind, "host": h.name, "t0": t0, "t1": time.time()})


def false_deaths(hosts: list[Host], events: list) -> list[dict]:
    """Deaths declared of a host within a stall of it (or 2 s after) that nothing else explains."""
    out = []
    for ev in (e for e in events if e["kind"] == "stall"):
        lo, hi = joblog.local_day_s(ev["t0"]), joblog.local_day_s(ev["t1"]) + 2.0
        others = [e for e in events if e is not ev and e["host"] == ev["host"] and
                  e["t0"] - 10 <= ev["t0"] <= e["t1"] + 10]  # a kill or cut nearby explains a death
        if others:
            continue
        for h in hosts:
            if h.name == ev["host"]:
                continue
            for line in h.log.read_text(errors="replace").splitlines():
                m = DEAD.match(line)
                if m and m.group(2) == ev["host"] and lo <= joblog.day_s(m.group(1)) <= hi:
                    out.append({"host": ev["host"], "by": h.name, "at": m.group(1)})
    return out


def job_rows(h0: Host, owner: str) -> list[tuple]:
    """(key, state, attempts, has result, id) of h0's chaos jobs; one row per key (the schema's UNIQUE)."""
    c = sqlite3.connect(f"file:{h0.data / 'jobs.db'}?mode=ro", uri=True)
    rows = c.execute(
        "SELECT idempotency_key, state, attempts, length(coalesce(result_text, '')) > 0, id FROM jobs"
        " WHERE owner = ? AND idempotency_key LIKE 'chaos-%'", (owner,)
    ).fetchall()
    c.close()
    return rows


def job_verdict(h0: Host, owner: str, keys: list[str]) -> dict:
    rows = job_rows(h0, owner)
    states = Counter(s for _, s, *_ in rows)
    return {
        "jobs": len(keys), "done": states["done"], "failed": states["failed"],
        "not_finished": states["queued"] + states["running"],
        "lost": len(set(keys) - {k for k, *_ in rows}),
        "with_result": sum(1 for _, s, _, r, _ in rows if s == "done" and r),
        "retried": sum(1 for _, _, a, _, _ in rows if a > 1),
    }


def executions(hosts: list[Host], h0: Host, owner: str, keys: list[str], events: list) -> dict:
    """Generations per job from the peers' logs (see tests/support/joblog.py)."""
    logs = joblog.read_logs({h.name: h.log for h in hosts})
    ids = {r[4] for r in job_rows(h0, owner) if r[0] in keys}
    faults = [joblog.Fault(e["host"], e["t0"], e["t1"]) for e in events if e["kind"] in FAULTS_THAT_MAY_REPEAT_A_JOB]
    return joblog.verdict(joblog.generations(logs), faults, owners=dict.fromkeys(ids, h0.name), job_ids=sorted(ids))


def run(lab, root: Path, *, peers: int, duration_s: float, jobs: int, seed: int, loss: float,
        rotate: bool = False) -> dict:
    rng = random.Random(seed)
    hosts = start_mesh(lab, root, peers, loss)
    h0 = hosts[0]
    owner = json.loads(h0.mesh("info", "--json").stdout)["peer"]
    events: list = []
    client = lab[0].popen([sys.executable, CLIENT, str(h0.data), str(duration_s), str(jobs), str(seed)],
                          stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        chaos(lab, hosts, rng, duration_s, events, rotate=rotate)
        lines = [json.loads(line) for line in client.stdout]  # the client ends once its jobs are in
        client.wait(120)
        chaos_s = time.monotonic() - t0
        for h in hosts[1:]:  # everything back for the end
            lab.link_up(h.ns)
            if h.proc is not None and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGCONT)
            else:
                h.start()
        keys = [d["submit"] for d in lines if "submit" in d]

        def all_done() -> bool:
            v = job_verdict(h0, owner, keys)
            return v["done"] + v["failed"] == len(keys)

        wait_until(all_done, "every job finished", 300)
        settle_s = time.monotonic() - t0 - chaos_s
    finally:
        if client.poll() is None:
            client.kill()
        for h in hosts:
            h.stop()
    asks = Counter(d["ask"] for d in lines if "ask" in d)
    slowest = max((d["s"] for d in lines if "ask" in d), default=0.0)
    errors = Counter(d["error"].split(":")[0] for d in lines if d.get("ask") == "clear_error")
    names = joblog.peer_ids(joblog.read_logs({h.name: h.log for h in hosts}))
    answered_by = Counter(names.get(d["peer"], d["peer"]) for d in lines if d.get("ask") == "ok")
    figures = {
        "bench": "chaos", "peers": peers, "seed": seed, "loss": loss, "chaos_s": round(chaos_s, 1),
        "settle_s": round(settle_s, 1), "events": dict(Counter(e["kind"] for e in events)),
        "asks": sum(asks.values()), "answered": asks["ok"], "clear_errors": asks["clear_error"],
        "deadline": asks["deadline"], "hung": asks["hang"], "unexpected": asks["unexpected"],
        "late": sum(1 for d in lines if "ask" in d and d["s"] > d["deadline_s"] + LATE_MARGIN_S),
        "error_types": dict(errors), "slowest_ask_s": slowest, "answered_by": dict(answered_by),
        "answered_by_entry": answered_by[h0.name],
        "answered_by_others": sum(n for name, n in answered_by.items() if name in {h.name for h in hosts[1:]}),
        "false_deaths": false_deaths(hosts, events),
        **{f"jobs_{k}": v for k, v in job_verdict(h0, owner, keys).items()},
        **{f"jobs_{k}": v for k, v in executions(hosts, h0, owner, keys, events).items()},
        "submit_retries": sum(1 for d in lines if "submit_retry" in d),
    }
    return figures


def report(f: dict) -> bool:
    say(f"chaos: {f['peers']} peers, seed {f['seed']}, {f['chaos_s']} s of faults {f['events']}, "
        f"gossip loss {f['loss']:.0%}, then {f['settle_s']} s to settle")
    say(f"  asks        {f['asks']}: {f['answered']} answered (by {f['answered_by']}), {f['clear_errors']} clear "
        f"errors {f['error_types']}, {f['deadline']} at their deadline, {f['late']} late, {f['hung']} hung, "
        f"{f['unexpected']} untyped; slowest {f['slowest_ask_s']} s")
    say(f"  jobs        {f['jobs_jobs']}: {f['jobs_done']} done ({f['jobs_with_result']} with a result), "
        f"{f['jobs_failed']} failed, {f['jobs_lost']} lost; generations per job {f['jobs_executions']} "
        f"({f['jobs_reexecuted_after_fault']} again after a fault of their peer "
        f"({f['jobs_reexecuted_beyond_one_per_fault']} beyond one per fault), "
        f"{f['jobs_reexecuted_unexplained']} unexplained {f['jobs_duplicate_examples']}), "
        f"{f['jobs_moved']} generated off the entry peer, {f['jobs_retried']} with more than one attempt")
    say(f"  false deaths of stalled peers: {len(f['false_deaths'])}")
    ok = ok_figures(f)
    say("  verdict     " + ("nothing lost, nothing run twice without cause, nothing hung" if ok else "FAILED"))
    return ok


def ok_figures(f: dict) -> bool:
    asks_ended = f["answered"] + f["clear_errors"] + f["deadline"]
    return (f["hung"] == 0 and f["unexpected"] == 0 and f["late"] == 0 and asks_ended == f["asks"] > 0
            and f["answered"] > 0 and f["answered_by_entry"] == 0 and f["answered_by_others"] == f["answered"]
            and f["jobs_lost"] == 0 and f["jobs_never_ran"] == 0 and f["jobs_reexecuted_unexplained"] == 0
            and f["jobs_moved"] == f["jobs_done"] and not f["events"].get("rotate_failed")
            and f["jobs_done"] == f["jobs_jobs"] == f["jobs_with_result"] and not f["false_deaths"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    p.add_argument("--jobs", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss", type=float, default=0.02, help="fraction of gossip each peer drops")
    p.add_argument("--rotate", action="store_true", help="mix `mesh rotate` of peers into the faults")
    args = p.parse_args(argv)
    import tempfile

    say(f"chaos seed {args.seed} (replay with --seed {args.seed})")
    with netns.Lab(args.peers) as lab:
        f = run(lab, Path(tempfile.mkdtemp(prefix="chaos-")), peers=args.peers, duration_s=args.duration,
                jobs=args.jobs, seed=args.seed, loss=args.loss, rotate=args.rotate)
    ok = report(f)
    print(json.dumps(f, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
