"""Long, coverage-guided fuzzing of mesh's network decoders under atheris (libFuzzer).

The same targets and property as the bounded CI run in ``tests/fuzz`` (see
``tests/fuzz/targets.py``): only the decoder's typed refusal may come out; any other
exception, an input slower than ``-timeout`` seconds, or a process above
``-rss_limit_mb`` is a finding, and libFuzzer writes the input to ``crash-*`` /
``timeout-*`` / ``oom-*`` in ``--artifacts``.

Run (10 minutes over every target, on one core)::

    .venv/bin/python bench/fuzz_decoders.py --seconds 600
    .venv/bin/python bench/fuzz_decoders.py --target gossip --seconds 300   # one target
    .venv/bin/python bench/fuzz_decoders.py --list

Targets: envelope (raw frames, member-signed payloads, credentials beside a stranger's
frame), certificate (raw, authority-signed payloads), token (text, raw msgpack), gossip
(datagrams through ``Swim.receive``, member records), jobs (ask / route / handover /
outcome args), enrol (``mesh.enrol`` requests), hints (mDNS records). The corpus starts
from real frames made by the real encoders (``tests/fuzz/seeds.py``) and grows in
``--corpus`` (default ``artifacts/fuzz/corpus``); a custom mutator mixes libFuzzer's
byte mutations with the msgpack-level ones of ``tests/fuzz/mutate.py``.
Extra arguments go to libFuzzer (e.g. ``-jobs=2``, ``-runs=100000``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import sys
import time
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "fuzz"), str(ROOT / "tests"), str(ROOT)]

with atheris.instrument_imports(include=["mesh"]):
    import msgpack
    import mutate
    import seeds
    import targets

    from mesh.rpc.limits import UNPACK_ERRORS, depth_exceeds, unpack_bounded

TARGETS = ("envelope", "certificate", "token", "gossip", "jobs", "enrol", "hints")
MODES = 3
STATS: collections.Counter = collections.Counter()
STARTED = time.monotonic()


def _value(data: bytes):
    """Bytes as a msgpack value, bounded like an envelope body (or None)."""
    try:
        value = unpack_bounded(data)
    except UNPACK_ERRORS:
        return None
    return None if depth_exceeds(value, 16) else value


def run_one(target: str, mode: int, body: bytes) -> object:
    c = seeds.corpus()
    if target == "envelope":
        if mode == 0:
            return targets.envelope_frame(body)
        if mode == 1:
            return targets.envelope_payload(body)
        return targets.envelope_frame(c.stranger_frames[len(body) % len(c.stranger_frames)], body)
    if target == "certificate":
        return targets.certificate(body) if mode == 0 else targets.certificate_payload(body)
    if target == "token":
        return targets.token_text(body.decode("utf-8", "replace")) if mode == 0 else targets.token_raw(body)
    if target == "gossip":
        return targets.gossip_datagram(body) if mode != 2 else targets.member_record(body)
    if target == "jobs":
        value = _value(body)
        return targets.job_inputs(value) if value is not None else targets.REFUSED
    if target == "enrol":
        value = _value(body)
        return targets.enrol(value, sender=seeds.STRANGER.peer_id if mode else None) if value is not None else targets.REFUSED
    if target == "hints":
        fdp = atheris.FuzzedDataProvider(body)
        props = {fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)): (fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
                 if fdp.ConsumeBool() else None) for _ in range(fdp.ConsumeIntInRange(0, 40))}
        if mode:
            props.update({b"id": seeds.SENDER.peer_id_text.encode(), b"mesh": targets.MESH_FP.encode(), b"v": b"1"})
        name = f"{seeds.SENDER.peer_id_text}._mesh._tcp.local." if mode == 2 else fdp.ConsumeUnicode(60)
        addresses = [fdp.ConsumeUnicode(40) for _ in range(fdp.ConsumeIntInRange(0, 20))]
        return targets.mdns_hint(name=name, properties=props, addresses=addresses, port=fdp.ConsumeIntInRange(-2, 70000))
    raise ValueError(target)


def make_test(only: str | None):
    def test_one_input(data: bytes) -> None:
        if len(data) < 2:
            return
        target = only or TARGETS[data[0] % len(TARGETS)]
        out = run_one(target, data[1] % MODES, data[2:])
        STATS[(target, "refused" if out is targets.REFUSED else "accepted")] += 1
        total = sum(STATS.values())
        if total >= 1 << 15 and total & (total - 1) == 0:  # at 32 K, 64 K, 128 K ... inputs
            report()

    return test_one_input


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if len(data) > 2 and rng.random() < 0.3:
        out = data[:2] + mutate.payload_mutation(data[2:], rng)
    elif rng.random() < 0.1:
        out = data[:2] + mutate.bytes_mutation(data[2:], rng, pool=seeds.corpus().all_bytes)
    else:
        out = atheris.Mutate(data, max_size)
    return out[:max_size]


def write_corpus(directory: Path) -> int:
    """The real seeds, each with its (target, mode) prefix."""
    c = seeds.corpus()
    items: list[tuple[int, int, bytes]] = []
    t = TARGETS.index
    items += [(t("envelope"), 0, f) for f in c.frames] + [(t("envelope"), 1, p) for p in c.payloads]
    items += [(t("envelope"), 2, cr) for cr in c.credentials]
    items += [(t("certificate"), 0, x) for x in c.certificates] + [(t("certificate"), 1, x[:-64]) for x in c.certificates]
    items += [(t("token"), 0, x.encode()) for x in c.tokens]
    items += [(t("gossip"), 0, g) for g in c.gossip] + [(t("gossip"), 2, r) for r in c.records]
    items += [(t("jobs"), 0, msgpack.packb(a)) for a in c.args]
    items += [(t("enrol"), 1, msgpack.packb(targets.enrolment().seed_args))]
    items += [(t("hints"), 2, bytes(range(64)))]
    directory.mkdir(parents=True, exist_ok=True)
    for target, mode, body in items:
        blob = bytes([target, mode]) + body
        (directory / hashlib.sha1(blob).hexdigest()).write_bytes(blob)
    return len(items)


def report() -> None:
    elapsed = time.monotonic() - STARTED
    total = sum(STATS.values())
    by = ", ".join(f"{t} {o} {n}" for (t, o), n in sorted(STATS.items()))
    print(f"fuzz_decoders: {total} inputs in {elapsed:.0f}s, no finding so far ({by})", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=TARGETS, help="fuzz one target (default: all, chosen by the first byte)")
    ap.add_argument("--seconds", type=int, default=600, help="total time (libFuzzer -max_total_time)")
    ap.add_argument("--corpus", type=Path, default=ROOT / "artifacts" / "fuzz" / "corpus")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "fuzz")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args, libfuzzer = ap.parse_known_args()
    if args.list:
        print("\n".join(TARGETS))
        return
    corpus = args.corpus / (args.target or "all")
    n = write_corpus(corpus)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    print(f"fuzz_decoders: {n} real seeds in {corpus}; {args.seconds}s; findings go to {args.artifacts}/")
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", "-timeout=10", "-rss_limit_mb=2048",
            "-max_len=65536", f"-artifact_prefix={args.artifacts}/", "-print_final_stats=1", *libfuzzer]
    atheris.Setup(argv, make_test(args.target), custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
