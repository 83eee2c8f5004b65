"""Overload: a single peer and a three-peer mesh held at --concurrency requests at once,
through the HTTP API (OpenAI chat completions) and the RPC path (`ask`).

    .venv/bin/python bench/load.py [--concurrency 1000] [--rounds 2] [--max-tokens 4]

For each topology and path:
1. calm: --calm sequential requests, their latency (the baseline);
2. load: --concurrency requests started at once, --rounds times; every one must end with
   an answer or a clear "busy" (HTTP 429 with Retry-After, RPC `busy`) or "no answer"
   (503) well before its deadline: timeouts and other errors are counted as failures;
   the peers' resident memory (RSS) is sampled throughout;
3. after: how long until a request succeeds again, then --calm sequential requests;
   their latency as a ratio to calm (recovery).

Real mesh-peer processes on loopback with the real model (1 thread each), HTTP rate
limits off (--http-rate 0) so the backends' bounded queues are what answers "busy"; the
RPC path goes through 16 client connections (one key: the per-sender RPC rate limit and
the per-connection call limit also answer "busy"). Prints a report, then one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mesh.client import Client  # noqa: E402
from mesh.errors import BackendBusy, MeshError, NoAnswer  # noqa: E402
from support.peerproc import PeerProcess, run_mesh  # noqa: E402

PEER_ARGS = ("--threads", "1", "--ctx", "512", "--http-rate", "0", "--queue", "8")
PROMPT = [{"role": "user", "content": "Say one word."}]


def say(msg: str) -> None:
    print(msg, flush=True)


def start_peers(root: Path, n: int) -> list[PeerProcess]:
    first = PeerProcess(root / "p0", "--name", "p0", *PEER_ARGS)
    info = first.wait_ready(180)
    peers = [first]
    port = info["endpoint"].rsplit(":", 1)[1]
    for i in range(1, n):
        token = run_mesh("invite", data_dir=root / "p0").stdout.strip()
        p = PeerProcess(root / f"p{i}", "--name", f"p{i}", "--join-token", token, "--join", f"127.0.0.1:{port}",
                        *PEER_ARGS)
        p.wait_ready(180)
        peers.append(p)
    if n > 1:  # the entry peer must see the others before it can route to them
        # ... alive, with their models gossiped (what the router scores them by)
        deadline = time.monotonic() + 60
        while True:
            r = run_mesh("peers", "--json", data_dir=root / "p0")
            members = json.loads(r.stdout) if r.returncode == 0 else []
            if sum(m["state"] == "alive" and bool((m.get("meta") or {}).get("models")) for m in members) == n:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the entry peer did not see {n} peers alive with their models in 60 s")
            time.sleep(0.5)
    return peers


class RssSampler:
    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# -- the two paths ----------------------------------------------------------------------


async def http_one(client: httpx.AsyncClient, url: str, max_tokens: int, timeout_s: float) -> str:
    try:
        r = await client.post(f"{url}/v1/chat/completions", timeout=timeout_s,
                              json={"model": "mesh", "messages": PROMPT, "max_tokens": max_tokens})
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError:
        return "error"
    if r.status_code == 200:
        return "ok"
    if r.status_code == 429:
        return "busy" if r.headers.get("Retry-After") else "error"
    if r.status_code == 503:
        return "no_answer"
    return f"http_{r.status_code}"


async def rpc_one(client: Client, max_tokens: int, timeout_s: float) -> str:
    try:
        await client.aask("Say one word.", max_tokens=max_tokens, timeout_s=timeout_s)
        return "ok"
    except BackendBusy:
        return "busy"
    except NoAnswer:
        return "no_answer"
    except MeshError as e:
        return "timeout" if "deadline" in str(e).lower() or "within" in str(e) else "error"


async def measure(path: str, peers: list[PeerProcess], args) -> dict:
    entry = peers[0]
    url = entry.info["http"]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as http:
        clients = [Client(entry.data_dir, timeout_s=args.timeout) for _ in range(16)]

        async def one(i: int) -> str:
            if path == "http":
                return await http_one(http, url, args.max_tokens, args.timeout)
            return await rpc_one(clients[i % len(clients)], args.max_tokens, args.timeout)

        async def calm() -> list[float]:
            out = []
            for i in range(args.calm):
                t = time.perf_counter()
                got = await one(i)
                assert got == "ok", f"a calm request failed: {got}"
                out.append(time.perf_counter() - t)
            return out

        before = await calm()
        outcomes: Counter[str] = Counter()
        slowest = 0.0
        with RssSampler([p.proc.pid for p in peers]) as rss:
            rss_before = rss.now()
            for _ in range(args.rounds):
                t0 = time.perf_counter()

                async def timed(i: int, t0: float = t0):
                    out = await one(i)
                    return out, time.perf_counter() - t0

                results = await asyncio.gather(*(timed(i) for i in range(args.concurrency)))
                for out, dt in results:
                    outcomes[out] += 1
                    slowest = max(slowest, dt)
        # recovery: the first request that succeeds once the load stopped, then calm again
        t_stop = time.perf_counter()
        not_yet: Counter[str] = Counter()  # what requests got before the first success
        for i in range(40):
            got = await one(i)
            if got == "ok":
                break
            not_yet[got] += 1
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("the peer did not recover within 10 s of the load stopping")
        settle_s = time.perf_counter() - t_stop
        after = await calm()
        for c in clients:
            await c.aclose()
    p50 = statistics.median
    return {
        "path": path, "peers": len(peers), "requests": args.concurrency * args.rounds,
        "outcomes": dict(outcomes),
        "failed": sum(n for k, n in outcomes.items() if k not in ("ok", "busy", "no_answer")),
        "slowest_s": round(slowest, 2),
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_peak_mb": round(rss.peak / 2**20, 1),
        "calm_p50_ms": round(p50(before) * 1000, 1), "after_p50_ms": round(p50(after) * 1000, 1),
        "recovery_ratio": round(p50(after) / p50(before), 2), "first_ok_after_load_s": round(settle_s, 2),
        "before_first_ok": dict(not_yet),
    }


def run_topology(n: int, args) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix=f"load-{n}-"))
    say(f"starting {n} peer(s) ...")
    peers = start_peers(root, n)
    try:
        rows = []
        for path in ("http", "rpc"):
            say(f"  {n} peer(s), {path}: {args.concurrency} at once x {args.rounds} ...")
            row = asyncio.run(measure(path, peers, args))
            say(f"    {row['outcomes']}, slowest {row['slowest_s']} s, RSS {row['rss_before_mb']} -> "
                f"{row['rss_peak_mb']} MB peak, p50 calm {row['calm_p50_ms']} ms -> after {row['after_p50_ms']} ms")
            rows.append(row)
        return rows
    finally:
        for p in peers:
            p.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--calm", type=int, default=15)
    p.add_argument("--timeout", type=float, default=120.0, help="each request's deadline")
    p.add_argument("--topologies", default="1,3", help="peer counts to run, e.g. 1,3")
    args = p.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.topologies.split(",")):
        rows.extend(run_topology(n, args))
    say("")
    say(f"{'peers':>5} {'path':>4} {'requests':>8} {'ok':>6} {'busy':>6} {'noans':>6} {'failed':>6} "
        f"{'slowest s':>9} {'RSS MB':>14} {'recovery':>8}")
    for r in rows:
        o = r["outcomes"]
        say(f"{r['peers']:>5} {r['path']:>4} {r['requests']:>8} {o.get('ok', 0):>6} {o.get('busy', 0):>6} "
            f"{o.get('no_answer', 0):>6} {r['failed']:>6} {r['slowest_s']:>9} "
            f"{str(r['rss_before_mb']) + '->' + str(r['rss_peak_mb']):>14} {r['recovery_ratio']:>8}")
    ok = all(r["failed"] == 0 for r in rows)
    say("verdict: " + ("every request answered or told busy; none timed out" if ok else "FAILURES"))
    print(json.dumps({"bench": "load", "concurrency": args.concurrency, "rounds": args.rounds, "rows": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
