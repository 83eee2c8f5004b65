"""``python -m mesh.discovery``: announce and browse ``_mesh._tcp.local.``, print JSON lines.

A diagnostic for "why don't my peers see each other": run it on two machines with the
same ``--mesh`` and each should print the other. It does not start a peer and admits
nobody. Used by the namespace tests as the process in each namespace.

Lines on stdout (one JSON object each, flushed):
``{"event": "started", "peer_id", "addresses", "t"}``,
``{"event": "hint", "peer_id", "mesh", "address", "alternates", "version", "t"}``,
``{"event": "gone", "peer_id", "t"}``, and at exit ``{"event": "stats", ...counters}``.
``t`` is seconds since the process started. Stops after ``--seconds`` or on SIGTERM /
SIGINT, withdrawing the announcement first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
import time

from mesh.discovery.hints import Hint
from mesh.discovery.mdns import MdnsDiscovery
from mesh.errors import MeshError
from mesh.identity.keys import PEER_ID_BYTES, peer_id_text


def _emit(event: str, t0: float, **fields) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - t0, 3), **fields}), flush=True)


async def _run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    peer_id = args.id or peer_id_text(secrets.token_bytes(PEER_ID_BYTES))

    def on_hint(h: Hint) -> None:
        _emit("hint", t0, peer_id=h.peer_id, mesh=h.mesh, address=h.address,
              alternates=list(h.alternates), version=h.version)

    def on_gone(pid: str) -> None:
        _emit("gone", t0, peer_id=pid)

    disc = MdnsDiscovery(
        peer_id=peer_id,
        mesh=args.mesh,
        port=args.port,
        on_hint=on_hint,
        on_gone=on_gone,
        interfaces=args.ip or None,
        announce=not args.no_announce,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await disc.start()
    try:
        _emit("started", t0, peer_id=peer_id, addresses=disc.addresses)
        try:
            await asyncio.wait_for(stop.wait(), timeout=args.seconds)
        except TimeoutError:
            pass
    finally:
        await disc.aclose()
        _emit("stats", t0, **disc.stats.as_dict())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh.discovery", description=__doc__.splitlines()[0])
    p.add_argument("--mesh", required=True, help="mesh fingerprint to announce and look for")
    p.add_argument("--id", help="peer id to announce (default: a random one)")
    p.add_argument("--port", type=int, default=7411, help="port to announce (default 7411)")
    p.add_argument("--ip", action="append", help="address to listen and announce on (repeatable)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until signalled)")
    p.add_argument("--no-announce", action="store_true", help="only browse")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except MeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
