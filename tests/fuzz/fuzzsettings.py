"""Hypothesis settings of the in-CI fuzz run: small and bounded, so all of tests/fuzz
takes well under a minute on two shared cores.

``MESH_FUZZ_EXAMPLES=N`` replaces every test's example count, for a longer run with hypothesis alone (``bench/fuzz_decoders.py`` is the long run under
atheris). Found examples are kept in ``.pytest_cache/hypothesis`` (git-ignored) and
replayed first on the next run.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_DB = DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis"))
_OVERRIDE = os.environ.get("MESH_FUZZ_EXAMPLES")


def fuzz(examples: int, *, deadline_ms: int = 2000) -> settings:
    """``examples`` per test (or ``MESH_FUZZ_EXAMPLES``); ``deadline_ms`` per example
    catches a hang or a super-linear decoder (generous: the cores are shared)."""
    return settings(
        max_examples=int(_OVERRIDE) if _OVERRIDE else examples,
        deadline=deadline_ms,
        database=_DB,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
