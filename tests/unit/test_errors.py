"""The one error tree: every wire code maps back to the class that owns it."""

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import mesh
from mesh.errors import MeshError, RemoteError, RpcError, error_from_wire

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _import_all_of_mesh() -> None:
    """Every module of the package, so every MeshError subclass anywhere is defined."""
    for info in pkgutil.walk_packages(mesh.__path__, "mesh."):
        importlib.import_module(info.name)


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _coded_classes() -> list[type[MeshError]]:
    """Every MeshError subclass that declares a wire code of its own."""
    _import_all_of_mesh()
    return sorted({c for c in _subclasses(MeshError) if "code" in vars(c)}, key=lambda c: c.__qualname__)


def test_the_walk_finds_the_classes_it_must():
    names = {c.__name__ for c in _coded_classes()}
    assert {"JobNotFound", "IdempotencyConflict", "BackendBusy", "Cancelled", "PeerUnavailable"} <= names


@pytest.mark.parametrize("cls", _coded_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_code_maps_back_to_its_class(cls):
    err = error_from_wire(cls.code, "the message")
    assert type(err) is cls, f"{cls.code!r} comes back as {type(err).__name__}, not {cls.__name__}"
    assert str(err) == "the message"
    assert err.code == cls.code


def test_no_two_classes_own_one_code():
    owners: dict[str, type] = {}
    for cls in _coded_classes():
        assert cls.code not in owners, f"{cls.__name__} and {owners[cls.code].__name__} both declare {cls.code!r}"
        owners[cls.code] = cls


def test_a_code_with_no_class_is_a_remote_error_carrying_it():
    for code in ("unknown_method", "internal", "unauthenticated", "rejected:stale_timestamp", "from_a_newer_peer"):
        err = error_from_wire(code, "why")
        assert type(err) is RemoteError and err.code == code and isinstance(err, RpcError)


def test_job_errors_are_in_the_one_tree_and_still_importable_from_mesh_jobs():
    from mesh.errors import JobError as TreeJobError
    from mesh.jobs import JobError, JobNotFound
    from mesh.jobs.errors import JobNotFound as FromErrorsModule

    assert JobNotFound is FromErrorsModule and JobError is TreeJobError
    assert issubclass(JobNotFound, JobError) and issubclass(JobError, MeshError)


def test_the_protocol_doc_lists_every_code_with_its_class():
    table = dict(re.findall(r"^\| `([a-z_:<>]+)` \| `(\w+)` \|", DOCS.read_text(encoding="utf-8"), re.M))
    for cls in _coded_classes():
        if cls.code in table:
            assert table[cls.code] == cls.__name__, cls.code
        else:
            pytest.fail(f"docs/protocol.md's error codes table lacks {cls.code!r} ({cls.__name__})")
