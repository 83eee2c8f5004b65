"""The jobs soak (bench/jobs_soak.py) at a small size: jobs submitted from three real
peers while peers are killed and restarted at random: every job done, generated once
(again only after the peer running it was killed: counted from the peers' logs), and
some jobs really moved between peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "jobs_soak.py"


def test_small_soak_every_job_done_once_unless_its_peer_was_killed(tmp_path):
    r = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "45", "--kill-every", "2.5", "--seed", "7", "--timeout", "240", "--submit-over", "10",
         "--dir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["done"] == figures["jobs"] == figures["with_result"] == 45
    assert figures["lost"] == figures["failed"] == figures["never_ran"] == 0, figures
    # each generation of a job beyond its first follows a kill of the peer that ran it
    assert figures["reexecuted_unexplained"] == 0, figures["duplicate_examples"]
    assert sum(int(k) * n for k, n in figures["executions"].items()) >= 45  # every job generated, counted from the logs
    assert figures["moved"] > 0, figures  # some jobs ran on a peer other than the one they were submitted to
    assert figures["kills"] >= 1  # the churn really happened
