"""Flags, logging and exit codes shared by ``mesh`` and ``mesh-peer``."""

from __future__ import annotations

import argparse
import logging
import sys

# Exit codes: scripts can tell "nothing is running" from "the peer said no".
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_PEER = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="where keys, trust and peer state live (default: $MESH_HOME, else the per-user data dir)",
    )


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d %(levelname)-5s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"mesh: {message}", file=sys.stderr)
    return code
