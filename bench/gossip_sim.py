"""How fast gossip spreads news and what it costs each member, from the simulator.

    .venv/bin/python bench/gossip_sim.py [--sizes 16,64,256,1000] [--losses 0,0.05] [--jobs 2] [--quick]

For each mesh size N and message loss rate, over several seeded trials of
``mesh.testing.SimNetwork`` with ``GossipConfig.lan()`` (1 s protocol periods, virtual
time, no sleeping):

1. join: a new peer joins through one random member; protocol periods until every
   member lists it alive.
2. failure: a random member is killed (kill -9); periods until every other member marks
   it dead (detection + suspicion timeout + dissemination), and periods from the first
   member declaring it dead until all do (dissemination of that news alone).
3. bytes each member sends per period, idle (probes, acks, anti-entropy digests) and
   with every member refreshing its load once per period (the issue's load churn),
   by message kind; and how stale a peer's view of another's load is under that churn.

Targets (issue 3): a change reaches all of 256 peers within 8 periods at p99 with 5%
loss; per-member bytes stay roughly flat as N grows. p99 is by nearest rank over the
trials run (with few trials it is close to the maximum). Fewer trials run at larger N so
the whole bench takes a few minutes on two cores.

Prints progress and a readable table, then ONE line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from mesh.gossip import GossipConfig, Status
from mesh.testing.network import SimNetwork

TRIALS = {16: 20, 64: 10, 256: 6, 1000: 2}
WARM_S = 15.0  # after bootstrap: the first gossip of every own record settles
WINDOW_PERIODS = 10
PROBE = ("ping", "ack", "ping_req", "nack")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def sent_by_kind(net: SimNetwork, ids: list[bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in ids:
        for kind, n in net.peers[p].sent.items():
            out[kind] = out.get(kind, 0) + n
    return out


def per_member_per_period(before: dict, after: dict, n: int, periods: float) -> dict[str, float]:
    kinds = {
        "probe": sum(after.get(k, 0) - before.get(k, 0) for k in PROBE),
        "gossip": after.get("gossip", 0) - before.get("gossip", 0),
        "sync": after.get("sync", 0) - before.get("sync", 0),
    }
    out = {k: v / n / periods for k, v in kinds.items()}
    out["total"] = sum(out.values())
    return out


def trial(n: int, loss: float, seed: int) -> dict:
    cfg = GossipConfig.lan()
    period = cfg.probe_interval_s
    net = SimNetwork(seed=seed, cfg=cfg, loss=loss, record_events=False)
    rng = random.Random(seed)
    ids = net.bootstrap(n)
    net.run(WARM_S)

    # idle cost
    b0 = sent_by_kind(net, ids)
    net.run(WINDOW_PERIODS * period)
    idle = per_member_per_period(b0, sent_by_kind(net, ids), n, WINDOW_PERIODS)

    # join
    new = net.add(seeds=[net.peers[rng.choice(ids)].address])
    t0 = net.now
    ok = net.run_until(lambda: net.all_see(new, Status.ALIVE, observers=ids), timeout_s=120, step_s=period / 20)
    join = (net.now - t0) / period if ok else math.inf
    net.run(5 * period)

    # failure
    victim = rng.choice(ids)
    observers = [p for p in net.running() if p != victim]
    net.kill(victim)
    t0 = net.now
    first_dead = [None]

    def all_dead() -> bool:
        seen = sum(net.status(o, victim) is Status.DEAD for o in observers)
        if seen and first_dead[0] is None:
            first_dead[0] = net.now
        return seen == len(observers)

    ok = net.run_until(all_dead, timeout_s=120, step_s=period / 20)
    fail = (net.now - t0) / period if ok else math.inf
    spread = (net.now - first_dead[0]) / period if ok else math.inf
    net.run(5 * period)

    # load churn: every member refreshes its load once per period
    live = net.running()
    b0 = sent_by_kind(net, live)
    for _ in range(WINDOW_PERIODS):
        for p in live:
            net.update_meta(p, {"load": {"active": rng.randrange(4), "queued": rng.randrange(8)}, "t": net.now})
        net.run(period)
    churn = per_member_per_period(b0, sent_by_kind(net, live), len(live), WINDOW_PERIODS)
    ages = []
    for _ in range(300):
        o, t = rng.sample(live, 2)
        v = net.view(o, t)
        if v is not None:
            ages.append((net.now - v.meta.get("t", net.now - WINDOW_PERIODS * period - WARM_S)) / period)
    return {
        "join": join,
        "fail": fail,
        "fail_spread": spread,
        "idle": idle,
        "churn": churn,
        "load_age_p50": statistics.median(ages),
    }


def summarize(n: int, loss: float, results: list[dict]) -> dict:
    def q(key: str) -> dict:
        vals = [r[key] for r in results]
        return {"p50": round(pct(vals, 50), 2), "p99": round(pct(vals, 99), 2)}

    def mean_bytes(key: str) -> dict:
        return {k: round(statistics.mean(r[key][k] for r in results)) for k in results[0][key]}

    return {
        "n": n,
        "loss": loss,
        "trials": len(results),
        "join_periods": q("join"),
        "fail_periods": q("fail"),
        "fail_spread_periods": q("fail_spread"),
        "bytes_per_member_per_period_idle": mean_bytes("idle"),
        "bytes_per_member_per_period_load_churn": mean_bytes("churn"),
        "load_view_age_periods_p50": round(statistics.median(r["load_age_p50"] for r in results), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64,256,1000")
    ap.add_argument("--losses", default="0,0.05")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (trials run in parallel)")
    ap.add_argument("--quick", action="store_true", help="a third of the trials")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    losses = [float(x) for x in args.losses.split(",")]
    started = time.time()
    rows = []
    pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
    for n in sizes:
        for loss in losses:
            k = TRIALS.get(n, 2)
            k = max(2, k // 3) if args.quick else k
            t = time.time()
            seeds = [1000 * n + int(loss * 100) * 37 + i for i in range(k)]
            if pool:
                results = list(pool.map(trial, [n] * k, [loss] * k, seeds))
            else:
                results = [trial(n, loss, s) for s in seeds]
            row = summarize(n, loss, results)
            rows.append(row)
            print(
                f"[{time.time() - started:6.1f}s] N={n:<5} loss={loss:.0%}: {k} trials in {time.time() - t:.1f}s",
                flush=True,
            )
    if pool:
        pool.shutdown()

    print()
    print("protocol periods (1 period = probe_interval_s = 1.0 s with GossipConfig.lan()); p50 / p99 over trials")
    print(
        f"{'N':>5} {'loss':>5} {'trials':>6} | {'join':>11} | {'kill->all dead':>14} | {'dead news':>11} |"
        f" {'B/member/period idle':>21} | {'with load churn':>16} | {'load age':>8}"
    )
    for r in rows:
        idle, churn = r["bytes_per_member_per_period_idle"], r["bytes_per_member_per_period_load_churn"]

        def pp(d):
            return f"{d['p50']:>5.1f}/{d['p99']:<5.1f}"

        print(
            f"{r['n']:>5} {r['loss']:>5.0%} {r['trials']:>6} | {pp(r['join_periods'])} | "
            f"{pp(r['fail_periods']):>14} | {pp(r['fail_spread_periods'])} | "
            f"{idle['total']:>6} (sync {idle['sync']:>5}) | {churn['total']:>16} | {r['load_view_age_periods_p50']:>8}"
        )
    print()
    print("join / dead news: periods until every member knows; kill->all dead adds detection and the suspicion timer.")
    print(
        "bytes: sent per member per period, all message kinds; load churn = every member re-signs its load each period."
    )
    print("load age: median periods between a member's load refresh and another member's view of it, under churn.")
    target = next((r for r in rows if r["n"] == 256 and r["loss"] == 0.05), None)
    if target:
        worst = max(target["join_periods"]["p99"], target["fail_spread_periods"]["p99"])
        print(f"target: a change reaches all of 256 peers within 8 periods at p99 with 5% loss -> {worst} periods")
    print(f"total {time.time() - started:.0f}s", file=sys.stderr)
    print(json.dumps({"bench": "gossip_sim", "config": "lan", "rows": rows}))


if __name__ == "__main__":
    main()
