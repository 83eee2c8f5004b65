"""Durable jobs under churn: N jobs submitted from three peers while peers are killed
(kill -9, sometimes SIGTERM) and restarted at random; at the end every job must be done,
nothing lost, and generated once, or again only after the peer running it was killed.

    .venv/bin/python bench/jobs_soak.py [--jobs 1000] [--peers 3] [--seed 1] [--kill-every 4] [--submit-over 60]

Real mesh-peer processes on loopback (fixed ports, so a restarted peer is found where
it was), the real model (--max-tokens tokens per answer, 1 thread each), real SQLite.
Jobs go to peer i % peers with the idempotency key "soak-SEED-i"; a submit that fails
because its peer is down is retried later with the same key (so a submit that did land
before the kill is not doubled). Churn stops once every job is submitted and --calm of
them are done; then the run waits for the rest.

The verdict reads the peers' job stores (jobs.db) directly after a clean stop, and their
logs:
- per key: a job at its owner, done, with a result (lost / failed must be 0); the store
  holds one row per key by construction, so it cannot show a job run twice;
- executions, from the peers' own logs (``job ID: generating on PEER``, one line per
  generation started, tests/support/joblog.py): every job generated at least once, and
  a second time only when the peer that ran the first was killed between the two
  (``reexecuted_unexplained`` must be 0; the others are counted);
- some jobs really moved: generated on a peer other than the one they were submitted
  to (``moved`` must be > 0).

Prints progress, a report, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mesh.client import Client  # noqa: E402
from mesh.errors import MeshError  # noqa: E402
from support import joblog  # noqa: E402
from support.peerproc import PeerProcess, free_port, run_mesh  # noqa: E402

PEER_ARGS = ("--threads", "1", "--ctx", "512", "--no-http")


def say(msg: str) -> None:
    print(msg, flush=True)


class Churn:
    """Three (or --peers) mesh-peer processes with fixed ports, killed and restarted."""

    def __init__(self, root: Path, n: int, rng: random.Random) -> None:
        self.root, self.n, self.rng = root, n, rng
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[PeerProcess | None] = [None] * n
        self.ids: list[str] = [""] * n
        self.kills = Counter()
        self.faults: list[joblog.Fault] = []  # each kill, from the signal until the peer is back

    def all_log(self, i: int) -> Path:
        """Every run of peer i's log (PeerProcess starts a new log file at each launch)."""
        return self.root / f"p{i}-all.log"

    def _archive(self, i: int, proc: PeerProcess) -> None:
        with open(self.all_log(i), "ab") as out:
            out.write(proc.log_path.read_bytes())

    def data(self, i: int) -> Path:
        return self.root / f"p{i}"

    def _seeds(self, i: int) -> list[str]:
        return [a for j in range(self.n) if j != i for a in ("--join", f"127.0.0.1:{self.ports[j]}")]

    def launch(self, i: int, *extra: str) -> None:
        proc = PeerProcess(self.data(i), "--rpc-port", str(self.ports[i]), "--name", f"p{i}", *PEER_ARGS,
                           *self._seeds(i), *extra)
        info = proc.wait_ready(180)
        self.procs[i], self.ids[i] = proc, info["peer_id"]

    def start(self) -> None:
        self.launch(0)
        for i in range(1, self.n):
            token = run_mesh("invite", data_dir=self.data(0)).stdout.strip()
            self.launch(i, "--join-token", token)

    def up(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.proc.poll() is None]

    def kill(self, i: int) -> str:
        proc = self.procs[i]
        assert proc is not None
        how = "SIGTERM" if self.rng.random() < 0.2 else "SIGKILL"
        proc.signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        try:
            proc.proc.wait(30)
        except Exception:
            proc.proc.kill()
            proc.proc.wait()
        proc._log.close()
        self._archive(i, proc)
        self.procs[i] = None
        self.kills[how] += 1
        return how

    def stop_all(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None:
                p.stop()
                self._archive(i, p)


def owner_view(db: Path, owner: str) -> dict[str, tuple[str, int, bool, str]]:
    """key -> (state, attempts, has result, job id) for the owner's own jobs, read from its store."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = c.execute(
            "SELECT idempotency_key, state, attempts, result_text IS NOT NULL AND length(result_text) > 0, id"
            " FROM jobs WHERE owner = ? AND idempotency_key LIKE 'soak-%'", (owner,)
        ).fetchall()
    finally:
        c.close()
    return {k: (s, a, bool(r), i) for k, s, a, r, i in rows}


def done_count(churn: Churn) -> int:
    n = 0
    for i in range(churn.n):
        db = churn.data(i) / "jobs.db"
        if db.exists():
            try:
                n += sum(1 for s, *_ in owner_view(db, churn.ids[i]).values() if s == "done")
            except sqlite3.Error:
                pass
    return n


async def submit_all(churn: Churn, keys: list[tuple[int, str, str]], max_tokens: int, stats: Counter,
                     spread_s: float = 0.0) -> None:
    pending = list(keys)
    gap = spread_s / max(1, len(keys))  # submissions spread over the churn, not all at once
    while pending:
        retry = []
        for owner, key, prompt in pending:
            if gap:
                await asyncio.sleep(gap)
            if owner not in churn.up():
                retry.append((owner, key, prompt))
                continue
            client = Client(churn.data(owner), timeout_s=10)
            try:
                await client.asubmit(prompt, key=key, max_tokens=max_tokens, temperature=0.0, timeout_s=5)
                stats["submitted"] += 1
            except (MeshError, OSError):
                stats["submit_retries"] += 1
                retry.append((owner, key, prompt))
            finally:
                await client.aclose()
        pending = retry
        if pending:
            await asyncio.sleep(0.5)


async def churn_loop(churn: Churn, rng: random.Random, every_s: float, stop: asyncio.Event, log: list) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(0.5 * every_s, 1.5 * every_s))
            return
        except TimeoutError:
            pass
        up = churn.up()
        if len(up) < 2:
            continue
        victim = rng.choice(up)
        killed_at = time.time()
        how = churn.kill(victim)
        down_s = rng.uniform(0.5, 3.0)
        log.append((time.monotonic(), f"p{victim}", how, round(down_s, 1)))
        await asyncio.sleep(down_s)
        await asyncio.to_thread(churn.launch, victim)
        churn.faults.append(joblog.Fault(f"p{victim}", killed_at, time.time()))


def verdict(churn: Churn, keys: list[tuple[int, str, str]]) -> dict:
    views = {i: owner_view(churn.data(i) / "jobs.db", churn.ids[i]) for i in range(churn.n)}
    states = Counter()
    attempts = Counter()
    with_result = 0
    job_owner: dict[str, str] = {}  # job id -> the host it was submitted to
    for owner, key, _ in keys:
        row = views[owner].get(key)
        if row is None:
            continue
        states[row[0]] += 1
        attempts[row[1]] += 1
        with_result += row[2]
        job_owner[row[3]] = f"p{owner}"
    logs = joblog.read_logs({f"p{i}": churn.all_log(i) for i in range(churn.n)})
    names = {churn.ids[i]: f"p{i}" for i in range(churn.n)}
    runs = joblog.verdict(joblog.generations(logs, names), churn.faults, owners=job_owner, job_ids=list(job_owner))
    copies = Counter()  # job id -> executors holding a handed-over copy
    for i in range(churn.n):
        c = sqlite3.connect(f"file:{churn.data(i) / 'jobs.db'}?mode=ro", uri=True)
        for (job_id,) in c.execute("SELECT id FROM jobs WHERE owner != ?", (churn.ids[i],)):
            copies[job_id] += 1
        c.close()
    return {
        "jobs": len(keys),
        "done": states["done"],
        "failed": states["failed"],
        "cancelled": states["cancelled"],
        "not_finished": states["queued"] + states["running"],
        "lost": sum(1 for owner, k, _ in keys if k not in views[owner]),
        "with_result": with_result,
        **runs,
        "handed_over": sum(1 for n in copies.values() if n >= 1),
        "handed_to_two_executors": sum(1 for n in copies.values() if n >= 2),
        "attempts": dict(sorted(attempts.items())),
    }


async def soak(args, root: Path) -> dict:
    rng = random.Random(args.seed)
    churn = Churn(root, args.peers, rng)
    say(f"starting {args.peers} peers in {root} ...")
    churn.start()
    say("peers: " + ", ".join(f"p{i}={churn.ids[i][:12]}@{churn.ports[i]}" for i in range(churn.n)))
    keys = [(i % churn.n, f"soak-{args.seed}-{i}", f"Give one word for a colour. (#{i})") for i in range(args.jobs)]
    stats: Counter = Counter()
    kills: list = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    chaos = asyncio.create_task(churn_loop(churn, rng, args.kill_every, stop, kills))
    submitter = asyncio.create_task(submit_all(churn, keys, args.max_tokens, stats, args.submit_over))
    deadline = t0 + args.timeout
    last = 0.0
    try:
        while True:
            await asyncio.sleep(1.0)
            done = await asyncio.to_thread(done_count, churn)
            now = time.monotonic()
            if now - last >= 10:
                last = now
                say(f"  {now - t0:6.0f} s: submitted {stats['submitted']}/{args.jobs}, done {done}, "
                    f"kills {len(kills)}, peers up {len(churn.up())}/{churn.n}")
            if submitter.done() and done >= args.calm * args.jobs and not stop.is_set():
                stop.set()
                say(f"  {now - t0:6.0f} s: churn stops ({done} done); waiting for the rest")
            if submitter.done() and done >= args.jobs:
                break
            if now > deadline:
                say(f"  timed out after {args.timeout:g} s")
                break
        elapsed = time.monotonic() - t0
        stop.set()
        await chaos
        if not submitter.done():
            submitter.cancel()
    finally:
        stop.set()
        await asyncio.to_thread(churn.stop_all)
    figures = verdict(churn, keys)
    figures.update({
        "bench": "jobs_soak", "peers": churn.n, "seed": args.seed, "elapsed_s": round(elapsed, 1),
        "jobs_per_s": round(figures["done"] / elapsed, 2), "kills": len(kills), "kill_signals": dict(churn.kills),
        "submit_retries": stats["submit_retries"], "max_tokens": args.max_tokens,
    })
    return figures


def ok_figures(f: dict) -> bool:
    return (f["done"] == f["jobs"] == f["with_result"] and not f["lost"] and not f["never_ran"]
            and not f["reexecuted_unexplained"] and f["moved"] > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--peers", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kill-every", type=float, default=4.0, metavar="S", help="mean seconds between kills")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--submit-over", type=float, default=60.0, metavar="S",
                   help="spread the submissions over this many seconds, while peers are killed")
    p.add_argument("--calm", type=float, default=0.9, help="stop the churn once this fraction is done")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--dir", type=Path, default=None, help="where the peers' data dirs go (default: a temp dir)")
    args = p.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="jobs-soak-"))
    figures = asyncio.run(soak(args, root))
    say("")
    say(f"jobs soak: {figures['jobs']} jobs from {figures['peers']} peers, {figures['kills']} kills "
        f"({figures['kill_signals']}), {figures['elapsed_s']} s ({figures['jobs_per_s']} jobs/s)")
    for k in ("done", "failed", "cancelled", "not_finished", "lost", "with_result", "handed_over",
              "handed_to_two_executors", "moved", "never_ran", "reexecuted_after_fault", "reexecuted_beyond_one_per_fault",
              "reexecuted_unexplained",
              "submit_retries"):
        say(f"  {k:<24} {figures[k]}")
    say(f"  attempts per job         {figures['attempts']}")
    say(f"  generations per job      {figures['executions']} (from the peers' logs)")
    if figures["duplicate_examples"]:
        say(f"  duplicate executions     {figures['duplicate_examples']}")
    ok = ok_figures(figures)
    say("  verdict                  " + ("every job done, each run once or again only after its peer was killed; "
                                         "jobs moved between peers" if ok else "FAILED"))
    print(json.dumps(figures, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
