"""The jobs soak (bench/jobs_soak.py) at a small size: jobs submitted from three real
peers while peers are killed and restarted at random; every job done exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "jobs_soak.py"


def test_small_soak_every_job_done_exactly_once(tmp_path):
    r = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "45", "--kill-every", "2.5", "--seed", "7", "--timeout", "240", "--submit-over", "10",
         "--dir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["done"] == figures["jobs"] == figures["with_result"] == 45
    assert figures["lost"] == figures["duplicated"] == figures["failed"] == 0
    assert figures["kills"] >= 1  # the churn really happened
