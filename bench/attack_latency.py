"""Honest request latency while a peer is under attack, against the same peer calm.

A two-peer mesh (real ``Peer``s, scripted backends) runs in its own process; an honest
member (p1's key, certificate and transport keys) pings p0 over RPC (CurveZMQ, like
every connection). Each attack runs in a third process, flooding p0 as fast as it can,
while the honest client measures again. The frame attacks come from an attacker on the
LAN that knows p0's transport public key and completes CURVE handshakes with fresh keys
of its own (4 connections), so every frame costs p0 a decryption before mesh's checks:

* ``garbage``        junk frames (no mesh key needed: anyone on the LAN)
* ``bad_signature``  frames from a member's id with a broken signature (each costs p0 an
                     Ed25519 verification)
* ``foreign_mesh``   frames signed by a key with a valid certificate of another mesh
* ``replay``         one member frame the attacker got hold of, sent again and again over
                     its own connections (the first copy is refused as
                     ``bad_transport_key``, every later one as ``replay``)
* ``slowloris``      256 raw TCP connections that never finish the ZMTP/CURVE handshake

The report gives honest p50/p95 per phase and the ratio to the calm phase measured in
the same run, and p0's refusal counters (from ``info``) per phase. Both processes share
the machine's cores with the attacker, so the ratio includes CPU contention, as it
would on one device. The last line is JSON.

    .venv/bin/python bench/attack_latency.py                  # about 40 s
    .venv/bin/python bench/attack_latency.py --pings 1000 --attacks garbage,replay
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

ATTACKS = ("garbage", "bad_signature", "foreign_mesh", "replay", "slowloris")


# --- the mesh process ------------------------------------------------------------------------


async def serve(directory: Path) -> None:
    from mesh.testing import ScriptedBackend
    from support import loopmesh

    peers = await loopmesh.start_mesh(directory, [ScriptedBackend(model="m0"), ScriptedBackend(model="m1")])
    await loopmesh.wait_for(lambda: all(len(p.membership_service.view()) == 2 for p in peers), 30)
    (directory / "endpoints.json").write_text(json.dumps(
        {"p0": peers[0].endpoint, "p0_transport": peers[0].certificate.curve_public.hex()}))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for p in peers:
        await p.stop()


# --- the attacker process ------------------------------------------------------------------


def member(directory: Path):
    from mesh.identity.keys import Identity
    from mesh.identity.membership import MeshMembership
    from mesh.paths import DataDir

    data = DataDir(directory / "p1")
    return Identity.load(data.identity_key), MeshMembership.load(data.membership).certificate


def p0_transport_key(directory: Path) -> bytes:
    """p0's transport public key, as its certificate (gossiped to all) names it."""
    return bytes.fromhex(json.loads((directory / "endpoints.json").read_text())["p0_transport"])


async def attack(kind: str, endpoint: str, directory: Path) -> None:
    import zmq.asyncio

    from support import adversary as adv

    ctx = zmq.asyncio.Context()
    if kind == "slowloris":
        loris = adv.Slowloris(endpoint, 256)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        loris.close()
        return
    identity, cert = member(directory)
    codec = adv.codec_of(identity, credential=cert)
    rng = random.Random(1)
    if kind == "garbage":
        frames = [[f] for f in adv.garbage_frames(4000, rng)]
    elif kind == "bad_signature":
        frames = [[adv.tampered(adv.call_frame(codec)), cert] for _ in range(2000)]
    elif kind == "foreign_mesh":
        intruder, foreign = adv.foreign_member()
        fc = adv.codec_of(intruder, credential=foreign)
        frames = [[adv.call_frame(fc), foreign] for _ in range(2000)]
    elif kind == "replay":
        frames = [[adv.call_frame(codec), cert]]
    else:
        raise ValueError(kind)
    server_key = p0_transport_key(directory)
    socks = [adv.RawDealer(ctx, endpoint, curve=adv.lan_attacker(server_key)) for _ in range(4)]
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    async def flood(sock):
        i = 0
        while not stop.done():
            await sock.send(*frames[i % len(frames)])
            i += 1
            if i % 64 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(flood(s) for s in socks))
    for s in socks:
        s.close()
    ctx.term()


# --- the honest client and the report --------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(args, directory: Path, endpoint: str) -> dict:
    import zmq.asyncio

    from mesh.identity.keys import Identity
    from mesh.identity.transport import TransportKeys
    from mesh.paths import DataDir
    from mesh.rpc.client import RpcClient
    from mesh.rpc.zap import CurveClient
    from support import adversary as adv

    identity, cert = member(directory)
    p0_key = Identity.load(DataDir(directory / "p0").identity_key).public_raw
    p1_transport = TransportKeys.load(DataDir(directory / "p1").transport_key)
    ctx = zmq.asyncio.Context()
    client = RpcClient(codec=adv.codec_of(identity, credential=cert, trusts=[p0_key]), endpoint=endpoint, ctx=ctx,
                       curve=CurveClient(p1_transport, p0_transport_key(directory)))
    client.connect()
    await client.call("ping", {}, timeout_s=10)

    async def rejections() -> dict:
        return (await client.call("info", {}, timeout_s=30))["rpc"]["rejections"]

    async def drained() -> None:
        """Wait until frames still queued from the last attacker are processed, so the next
        phase's counts and latencies are its own."""
        last = await rejections()
        while True:
            await asyncio.sleep(0.5)
            now = await rejections()
            if now == last:
                return
            last = now

    async def phase(name: str) -> dict:
        before = await rejections()
        lat = await adv.timed_pings(client, args.pings, timeout_s=args.deadline_s)
        after = await rejections()
        refused = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        return {"name": name, "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * pct(lat, 0.95),
                "max_ms": 1000 * max(lat), "refused": refused}

    results = [await phase("calm")]
    for kind in args.attacks:
        attacker = subprocess.Popen([sys.executable, __file__, "--attack", kind, "--endpoint", endpoint,
                                     "--dir", str(directory)], stdin=subprocess.PIPE)
        try:
            await asyncio.sleep(args.warmup_s)  # the flood is running before we measure ...
            if kind != "slowloris":  # ... and reaching p0 (slowloris sends nothing to count)
                start, deadline = await rejections(), time.monotonic() + 30
                while await rejections() == start and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
            results.append(await phase(kind))
        finally:
            attacker.stdin.close()
            attacker.wait(30)
        await drained()
    results.append(await phase("calm_after"))
    await client.close()
    ctx.term()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=300, help="honest pings per phase")
    ap.add_argument("--deadline-s", type=float, default=5.0, help="each honest ping's deadline")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="flood this long before measuring")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return asyncio.run(serve(args.serve))
    if args.attack:
        return asyncio.run(attack(args.attack, args.endpoint, args.dir))
    args.attacks = [a for a in args.attacks.split(",") if a]
    with tempfile.TemporaryDirectory(prefix="mesh-attack-") as tmp:
        directory = Path(tmp)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(directory)], stdin=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not (directory / "endpoints.json").exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the mesh process did not start")
                time.sleep(0.1)
            endpoint = json.loads((directory / "endpoints.json").read_text())["p0"]
            results = asyncio.run(measure(args, directory, endpoint))
        finally:
            server.stdin.close()
            server.wait(60)
    calm = results[0]
    print(f"\nhonest ping latency at p0 ({args.pings} pings per phase, deadline {args.deadline_s:g}s; all succeeded)")
    print(f"{'phase':15s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'p50 x':>6s} {'p95 x':>6s}  refused by p0")
    for r in results:
        r["p50_ratio"] = r["p50_ms"] / calm["p50_ms"]
        r["p95_ratio"] = r["p95_ms"] / calm["p95_ms"]
        refused = ", ".join(f"{k} {v}" for k, v in sorted(r["refused"].items())) or "-"
        print(f"{r['name']:15s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f} "
              f"{r['p50_ratio']:6.2f} {r['p95_ratio']:6.2f}  {refused}")
    summary = {
        "bench": "attack_latency", "pings_per_phase": args.pings, "calm_p50_ms": round(calm["p50_ms"], 3),
        "calm_p95_ms": round(calm["p95_ms"], 3),
        "attacks": {r["name"]: {"p50_ratio": round(r["p50_ratio"], 2), "p95_ratio": round(r["p95_ratio"], 2),
                                "refused": sum(r["refused"].values())} for r in results[1:]},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
