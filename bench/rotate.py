"""Key rotation under traffic: prompts keep flowing while a peer rotates its keys.

Two real mesh-peer processes on loopback with the real default model: ``hub`` (holds
the mesh authority) and ``laptop``. Client threads ask through the hub without pause,
half of the prompts pinned to the laptop by name (they must cross the rotation), half
routed freely. First a calm phase, then ``--rotations`` runs of ``mesh rotate`` on the
laptop, ``--every`` seconds apart, while the same traffic goes on.

Reported per phase: prompts asked, answered, failed (with the errors), latency p50/p95
and its ratio to the calm phase of the same run; per rotation: how long ``mesh rotate``
took, the switch time and the time the laptop was away from routing (from its log);
at the end, that every old id is revoked at the hub and the newest is alive. The last
line is JSON.

    .venv/bin/python bench/rotate.py                      # about 90 s
    .venv/bin/python bench/rotate.py --rotations 10 --every 5 --clients 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.peerproc import PeerProcess, run_mesh, wait_until  # noqa: E402

SWITCH_LINE = re.compile(r"keys rotated: peer (\w+) is now (\w+) .*switched in ([\d.]+)s, of which ([\d.]+)s away")


class Traffic:
    """Client threads asking until stopped; every outcome is kept. ``clients`` threads ask
    through the hub (a new Client per prompt, half pinned to the laptop), ``local``
    threads ask the laptop's own peer with one long-lived Client each (the embeddable
    client's case: it must follow its peer to its new keys)."""

    def __init__(self, hub_dir: Path, laptop_dir: Path, clients: int, local: int, max_tokens: int) -> None:
        self.hub_dir, self.laptop_dir, self.max_tokens = hub_dir, laptop_dir, max_tokens
        self.phase = "calm"
        self.records: list[dict] = []  # {phase, pinned, via, ok, latency_s, error}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self._threads += [threading.Thread(target=self._run_local, daemon=True) for _ in range(local)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _run(self, i: int) -> None:
        from mesh.client import Client

        n = 0
        while not self._stop.is_set():
            pinned = (n + i) % 2 == 0
            self._ask(Client(self.hub_dir, timeout_s=60), n, "hub", pinned, {"peer": "laptop"} if pinned else {})
            n += 1

    def _run_local(self) -> None:
        from mesh.client import Client

        client, n = Client(self.laptop_dir, timeout_s=60), 0
        while not self._stop.is_set():
            self._ask(client, n, "laptop", False, {"local_only": True})
            n += 1

    def _ask(self, client, n: int, via: str, pinned: bool, route: dict) -> None:
        phase, t0, error = self.phase, time.monotonic(), None
        try:
            client.ask(f"Say a colour. ({n})", max_tokens=self.max_tokens, temperature=0.0, no_escalate=True, **route)
        except Exception as e:  # counted and shown: the bench's subject
            error = f"{type(e).__name__}: {e}"[:160]
        with self._lock:
            self.records.append({"phase": phase, "pinned": pinned, "via": via, "ok": error is None,
                                 "latency_s": time.monotonic() - t0, "error": error})

    def summary(self, phase: str) -> dict:
        recs = [r for r in self.records if r["phase"] == phase]
        lat = sorted(r["latency_s"] for r in recs if r["ok"])
        return {
            "asked": len(recs), "answered": sum(r["ok"] for r in recs),
            "failed": sum(not r["ok"] for r in recs), "pinned": sum(r["pinned"] for r in recs),
            "local": sum(r["via"] == "laptop" for r in recs),
            "p50_s": statistics.median(lat) if lat else None,
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
            "errors": sorted({r["error"] for r in recs if r["error"]})[:5],
        }


def members(data_dir: Path) -> dict[str, dict]:
    r = run_mesh("peers", "--json", data_dir=data_dir)
    return {m["peer_id"]: m for m in json.loads(r.stdout)} if r.returncode == 0 else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rotations", type=int, default=5)
    ap.add_argument("--every", type=float, default=6.0, help="seconds between rotations (default 6)")
    ap.add_argument("--calm", type=float, default=20.0, help="seconds of traffic before rotating (default 20)")
    ap.add_argument("--clients", type=int, default=2, help="client threads asking through the hub (default 2)")
    ap.add_argument("--local", type=int, default=1,
                    help="threads asking the laptop's own peer with one long-lived client each (default 1)")
    ap.add_argument("--max-tokens", type=int, default=4)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mesh-rotate-"))
    hub = laptop = traffic = None
    rotations: list[dict] = []
    try:
        print(f"starting hub and laptop (real model) in {tmp} ...", flush=True)
        hub = PeerProcess(tmp / "hub", "--name", "hub", "--threads", "1")
        endpoint = hub.wait_ready()["endpoint"]
        token = run_mesh("invite", data_dir=hub.data_dir).stdout.strip()
        laptop = PeerProcess(tmp / "laptop", "--name", "laptop", "--threads", "1", "--join-token", token,
                             "--join", endpoint.removeprefix("tcp://"))
        first_id = laptop.wait_ready()["peer_id"]
        wait_until(lambda: members(hub.data_dir).get(first_id, {}).get("state") == "alive", 60)

        traffic = Traffic(hub.data_dir, laptop.data_dir, args.clients, args.local, args.max_tokens)
        traffic.start()
        print(f"calm: {args.calm:g}s of prompts ({args.clients} clients through the hub, {args.local} on the "
              "laptop) ...", flush=True)
        time.sleep(args.calm)
        traffic.phase = "rotating"
        for i in range(args.rotations):
            t0 = time.monotonic()
            r = run_mesh("rotate", "--json", "--wait", "60", data_dir=laptop.data_dir, timeout=90)
            took = time.monotonic() - t0
            if r.returncode != 0:
                rotations.append({"ok": False, "error": r.stderr.strip()[-300:], "took_s": took})
                print(f"  rotation {i + 1}: FAILED after {took:.2f}s: {r.stderr.strip()[-200:]}", flush=True)
            else:
                out = json.loads(r.stdout)
                rotations.append({"ok": True, "old": out["old_peer_id"], "new": out["peer_id"], "took_s": took})
                print(f"  rotation {i + 1}: {out['old_peer_id'][:12]} -> {out['peer_id'][:12]} "
                      f"(mesh rotate took {took:.2f}s)", flush=True)
            time.sleep(max(0.0, args.every - took))
        traffic.phase = "after"
        time.sleep(3)
        traffic.stop()
        switches = [m.groups() for m in SWITCH_LINE.finditer(laptop.log())]
        for rot, (old, new, switch_s, away_s) in zip([r for r in rotations if r["ok"]], switches):
            rot.update(switch_s=float(switch_s), away_s=float(away_s))
        view = members(hub.data_dir)
        newest = next((r["new"] for r in reversed(rotations) if r["ok"]), first_id)
        old_ids = [r["old"] for r in rotations if r["ok"]]
        revoked = sum(1 for pid in old_ids if view.get(pid, {}).get("revoked") is True)
        newest_alive = view.get(newest, {}).get("state") == "alive"
    finally:
        if traffic is not None:
            traffic.stop()
        for p in (laptop, hub):
            if p is not None:
                p.stop()

    calm, rot = traffic.summary("calm"), traffic.summary("rotating")
    ratio = {k: (rot[k] / calm[k] if rot[k] and calm[k] else None) for k in ("p50_s", "p95_s")}
    print()
    print(f"{'phase':<10} {'asked':>6} {'answered':>9} {'failed':>7} {'pinned':>7} {'local':>6} {'p50 s':>7} "
          f"{'p95 s':>7}")
    for name, s in (("calm", calm), ("rotating", rot)):
        p50 = f"{s['p50_s']:.3f}" if s["p50_s"] else "-"
        p95 = f"{s['p95_s']:.3f}" if s["p95_s"] else "-"
        print(f"{name:<10} {s['asked']:>6} {s['answered']:>9} {s['failed']:>7} {s['pinned']:>7} {s['local']:>6} "
              f"{p50:>7} {p95:>7}")
        for e in s["errors"]:
            print(f"    error: {e}")
    fmt = lambda v: f"{v:.2f}" if v else "-"  # noqa: E731
    print(f"latency while rotating / calm: p50 {fmt(ratio['p50_s'])}, p95 {fmt(ratio['p95_s'])}")
    print(f"\n{'rotation':<9} {'ok':<4} {'mesh rotate s':>13} {'switch s':>9} {'away s':>7}")
    for i, r in enumerate(rotations, 1):
        print(f"{i:<9} {'yes' if r['ok'] else 'NO':<4} {r['took_s']:>13.2f} {r.get('switch_s', 0):>9.2f} "
              f"{r.get('away_s', 0):>7.2f}")
    print(f"old ids revoked at the hub: {revoked}/{len(old_ids)}; newest id alive there: {newest_alive}")
    print(json.dumps({
        "bench": "rotate", "rotations": len(rotations), "rotations_ok": sum(r["ok"] for r in rotations),
        "calm": {k: v for k, v in calm.items() if k != "errors"},
        "rotating": {k: v for k, v in rot.items() if k != "errors"},
        "latency_ratio": ratio, "switch_s": [r.get("switch_s") for r in rotations],
        "away_s": [r.get("away_s") for r in rotations], "old_revoked": revoked, "newest_alive": newest_alive,
    }))


if __name__ == "__main__":
    main()
