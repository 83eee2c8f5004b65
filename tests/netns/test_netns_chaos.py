"""Chaos at a small size (bench/chaos.py): peers on simulated hosts killed, stalled, cut
off and rotating their keys (`mesh rotate`), with seeded gossip loss, while a client asks
and submits jobs through an entry peer that has no model (``--no-model``), so every
prompt is served by one of the peers under fault. Every ask ends with an answer (from a
peer other than the entry) or a typed mesh error by its deadline, none hung; every job
completes, generated once or again only after the peer generating it was faulted (from
the peers' logs), and ran off the entry peer; every rotation finishes; a peer stalled
for less than the suspicion timeout is never declared dead.

The seed drives the faults and the client: random unless MESH_CHAOS_SEED is set, and
printed either way, so a failure can be replayed (``MESH_CHAOS_SEED=N pytest ...``)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from support import netns

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos  # noqa: E402

pytestmark = [pytest.mark.subprocess, pytest.mark.netns, pytest.mark.model]


lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made
JOBS = 12


def chaos_seed() -> int:
    seed = int(os.environ.get("MESH_CHAOS_SEED") or random.Random().randrange(1_000_000))
    print(f"\n[chaos] seed {seed} (replay: MESH_CHAOS_SEED={seed})", flush=True)
    return seed


def test_chaos_every_ask_ends_every_job_runs_once_off_the_entry_peer(lab_factory, tmp_path, capsys):
    seed = chaos_seed()
    lab = lab_factory(4)
    f = chaos.run(lab, tmp_path, peers=4, duration_s=35, jobs=JOBS, seed=seed, loss=0.02, rotate=True)
    with capsys.disabled():
        ok = chaos.report(f)
    replay = f"(seed {seed}: MESH_CHAOS_SEED={seed} to replay) {f}"
    assert f["events"], f"no faults were injected {replay}"

    # every ask ended: answered, or a typed mesh error (deadline included), by its deadline
    assert f["asks"] > 0 and f["answered"] > 0, replay
    assert f["answered"] + f["clear_errors"] + f["deadline"] == f["asks"], replay
    assert f["hung"] == 0 and f["unexpected"] == 0 and f["late"] == 0, replay
    # the entry peer has no model: every answer came from one of the others
    assert f["answered_by_entry"] == 0 and f["answered_by_others"] == f["answered"], replay

    # every job completed with a result, nothing lost
    assert f["jobs_done"] == f["jobs_jobs"] == f["jobs_with_result"] == JOBS, replay
    assert f["jobs_lost"] == 0 and f["jobs_never_ran"] == 0, replay
    # generated once, or again only after a fault of the peer that generated it
    assert f["jobs_reexecuted_unexplained"] == 0, f"{f['jobs_duplicate_examples']} {replay}"
    # and all of them ran on peers other than their owner, the model-less entry peer
    assert f["jobs_moved"] == JOBS, replay

    assert not f["false_deaths"], f"{f['false_deaths']} {replay}"
    assert not f["events"].get("rotate_failed"), replay
    assert ok, replay
