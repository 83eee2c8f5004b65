"""Overload at a small size (bench/load.py): a peer held at many requests at once through
the HTTP API and the RPC path answers each one or says "busy" clearly; none times out,
and calm requests work again afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def test_overload_gives_answers_or_clear_busy_never_timeouts():
    r = subprocess.run(
        [sys.executable, str(BENCH), "--concurrency", "150", "--rounds", "1", "--calm", "3", "--topologies", "1",
         "--timeout", "60"],
        capture_output=True, text=True, timeout=400,
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    for row in figures["rows"]:
        assert row["failed"] == 0, row
        assert row["outcomes"].get("ok", 0) >= 1 and row["outcomes"].get("busy", 0) >= 1, row
        assert row["requests"] == sum(row["outcomes"].values())
        # once the load stops, the very next request is answered (the peer does not go on
        # calling itself busy from its last gossiped load)
        assert row["before_first_ok"] == {}, row
