"""Finding and assembling Gemma 3 270M (mesh.inference.known_models), against a stand-in
distribution and glue package made in a temporary directory: the error paths say to run
bin/setup, and assembling is atomic and idempotent."""

from __future__ import annotations

import textwrap

import pytest

from mesh.errors import ModelError
from mesh.inference.known_models import assemble_gemma3_270m, gemma3_270m_path

DIST, PACKAGE, FILE = "mesh-fake-gemma", "mesh_fake_gemma", "fake-model.gguf"
MODEL = b"GGUF fake model bytes"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An installed distribution DIST whose package PACKAGE ships data/SHA256SUMS and an
    ``assemble(output_path, overwrite)`` that behaves as the real glue package's."""
    info = tmp_path / f"{PACKAGE}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0.0\n")
    (info / "RECORD").write_text(f"{PACKAGE}/__init__.py,,\n{PACKAGE}/data/SHA256SUMS,,\n")
    (tmp_path / PACKAGE / "data").mkdir(parents=True)
    (tmp_path / PACKAGE / "data" / "SHA256SUMS").write_text("x  fake-model.gguf\n")
    (tmp_path / PACKAGE / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        CHUNKS_PRESENT = True
        CALLS = []

        def assemble(output_path, overwrite=False):
            target = Path(output_path)
            CALLS.append((target.name, overwrite))
            if not CHUNKS_PRESENT:
                raise FileNotFoundError("Missing chunk files: part03")
            if target.exists() and not overwrite:
                if target.read_bytes() != {MODEL!r}:
                    raise FileExistsError(f"{{target}} already exists with an unexpected sha256")
                return target
            target.write_bytes({MODEL!r})
            return target
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, PACKAGE, raising=False)
    return tmp_path / PACKAGE / "data" / FILE


def find():
    return gemma3_270m_path(dist_name=DIST, file_name=FILE)


def assemble():
    return assemble_gemma3_270m(dist_name=DIST, file_name=FILE, package=PACKAGE)


def test_not_installed_says_to_run_setup():
    with pytest.raises(ModelError, match=r"not installed .*'mesh-no-such-package'.*run bin/setup"):
        gemma3_270m_path(dist_name="mesh-no-such-package")


def test_installed_but_not_assembled_says_to_run_setup(site):
    with pytest.raises(ModelError, match=r"not assembled yet .*fake-model\.gguf is missing.*run bin/setup"):
        find()


def test_assembled_once_then_found_and_kept(site):
    assert assemble() == site and site.read_bytes() == MODEL
    assert find() == site
    mtime = site.stat().st_mtime_ns
    assert assemble() == site and site.stat().st_mtime_ns == mtime  # checked, not rewritten
    assert not list(site.parent.glob("*.assembling"))


def test_a_partial_file_is_assembled_anew_atomically(site):
    site.write_bytes(MODEL[:5])  # an assembly cut short by hand, or a corrupt copy
    assert assemble() == site and site.read_bytes() == MODEL
    import mesh_fake_gemma

    assert mesh_fake_gemma.CALLS == [(FILE, False), (FILE + ".assembling", True)]


def test_missing_chunks_say_to_run_setup_and_leave_nothing(site):
    import mesh_fake_gemma

    mesh_fake_gemma.CHUNKS_PRESENT = False
    with pytest.raises(ModelError, match=r"cannot be assembled: Missing chunk files.*run bin/setup"):
        assemble()
    assert not site.exists() and not list(site.parent.glob("*.assembling"))


def test_main_path_says_what_to_do_when_missing(monkeypatch, capsys):
    from mesh.inference import known_models

    def missing():
        raise ModelError("Gemma 3 270M is not installed; run bin/setup")

    monkeypatch.setattr(known_models, "gemma3_270m_path", missing)
    assert known_models.main(["--path"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "error: Gemma 3 270M is not installed; run bin/setup\n"
