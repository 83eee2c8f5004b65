"""Chaos at a small size (bench/chaos.py): peers on simulated hosts killed, stalled, cut
off and rotating their keys (`mesh rotate`), with seeded gossip loss, while a client asks
and submits jobs. Every ask ends with an answer or a clear error, every job completes
exactly once, every rotation finishes, and a peer stalled for less than the suspicion
timeout is never declared dead."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from support import netns

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos  # noqa: E402

pytestmark = [pytest.mark.subprocess, pytest.mark.netns, pytest.mark.model]


lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made


def test_chaos_nothing_lost_nothing_duplicated_nothing_hung(lab_factory, tmp_path):
    lab = lab_factory(4)
    f = chaos.run(lab, tmp_path, peers=4, duration_s=35, jobs=12, seed=random.Random().randrange(1000), loss=0.02,
                  rotate=True)
    ok = chaos.report(f)
    assert f["events"], "no faults were injected"
    assert f["hung"] == 0 and f["unexpected"] == 0, f
    assert f["jobs_lost"] == 0 and f["jobs_duplicated"] == 0, f
    assert f["jobs_done"] == f["jobs_jobs"] == f["jobs_with_result"] == 12, f
    assert not f["false_deaths"], f["false_deaths"]
    assert not f["events"].get("rotate_failed"), f
    assert f["answered"] > 0
    assert ok
