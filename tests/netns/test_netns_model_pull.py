"""Model pulls between simulated hosts (network namespaces, real mesh-peer processes,
the real `mesh models` CLI): from two sources with one killed (-9) half way, the puller
killed (-9) half way and resuming after a restart, a source whose file rotted on disk,
and the disk budget evicting the least recently used model.

The peers run --no-model: a pull needs no engine. The model files are small valid GGUF
files (tests/support/gguf_files.py) cut into 4 MiB pieces; a pull is slowed with --rate
so that a kill lands half way."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

import pytest

from mesh.models.service import PER_SOURCE
from support import netns
from support.gguf_files import write_gguf
from support.meshhosts import BIN, Host, wait_until

pytestmark = [pytest.mark.subprocess, pytest.mark.netns]

lab_factory = netns.netns_lab  # fails (never skips) where namespaces cannot be made
MB = 1_000_000


def _mesh(lab, tmp_path, n: int, *extra_last: str) -> list[Host]:
    hosts = [Host(lab[i], tmp_path, f"h{i}") for i in range(n)]
    hosts[0].start("--no-model")
    for i, h in enumerate(hosts[1:], 1):
        h.start("--no-model", "--join-token", hosts[0].invite(), *(extra_last if i == n - 1 else ()))
    wait_until(lambda: all(len(h.states()) == n and set(h.states().values()) == {"alive"} for h in hosts),
               f"mesh of {n}", 60)
    return hosts


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add(h: Host, path, name: str) -> None:
    out = h.mesh("models", "add", str(path), "--name", name).stdout
    assert f"added {name}" in out, out


def _pull_in_background(h: Host, model: str, *args: str) -> subprocess.Popen:
    return h.ns.popen([str(BIN / "mesh"), "models", "pull", model, "--json", "--data-dir", str(h.data), *args],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _progress_lines(proc: subprocess.Popen, until_percent: float, timeout_s: float = 60) -> list[str]:
    """Read the pull's progress lines (a line per tenth, stderr) until it passes ``until_percent``."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"\]\s+([\d.]+)%", line)
        if m and float(m.group(1)) >= until_percent:
            return lines
    raise AssertionError(f"the pull did not pass {until_percent}%: {lines}")


def _list(h: Host) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads(h.mesh("models", "list", "--json").stdout)["models"]}


def test_a_pull_from_two_sources_survives_one_being_killed(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = _mesh(lab, tmp_path, 3)
    model = write_gguf(tmp_path / "blob.gguf", size=48 * MB, seed=1)
    for h in hosts[:2]:
        _add(h, model, "blob-48M")
    listed = _list(hosts[2])["blob-48M"]
    assert len(listed["holders"]) == 2 and listed["size"] == model.stat().st_size

    pull = _pull_in_background(hosts[2], "blob-48M", "--rate", "8")  # about 6 s at 8 MB/s
    _progress_lines(pull, 20)
    assert pull.poll() is None  # still pulling
    hosts[0].kill9()  # a source dies half way
    out, err = pull.communicate(timeout=120)
    assert pull.returncode == 0, err
    result = json.loads(out)
    names = {json.loads(hosts[1].mesh("info", "--json").stdout)["peer"]: "h1"}
    assert result["progress"]["pieces_done"] == result["progress"]["pieces"] == 12
    by_name = {names.get(p, "h0"): n for p, n in result["progress"]["by_source"].items()}
    assert by_name["h1"] > 6 and by_name.get("h0", 0) < 6  # h1 carried the rest
    stored = hosts[2].data / "models" / "blobs" / f"{_sha(model)}.gguf"
    assert _sha(stored) == _sha(model)
    assert not any((hosts[2].data / "models" / "partial").iterdir())


def test_a_killed_puller_resumes_after_a_restart(lab_factory, tmp_path):
    lab = lab_factory(2)
    hosts = _mesh(lab, tmp_path, 2)
    model = write_gguf(tmp_path / "blob.gguf", size=48 * MB, seed=2)
    _add(hosts[0], model, "blob-48M")

    pull = _pull_in_background(hosts[1], "blob-48M", "--rate", "8")
    _progress_lines(pull, 30)
    assert pull.poll() is None
    hosts[1].kill9()  # the puller's peer dies half way
    pull.communicate(timeout=30)
    assert pull.returncode != 0
    assert any((hosts[1].data / "models" / "partial").iterdir())
    assert "blob-48M" not in {m for m in _names(hosts[1].data)}  # nothing half-written is visible

    hosts[1].start("--no-model")
    wait_until(lambda: set(hosts[1].states().values()) == {"alive"} and len(hosts[1].states()) == 2,
               "h1 back in the mesh", 60)
    r = hosts[1].mesh("models", "pull", "blob-48M", "--json")
    result = json.loads(r.stdout)
    assert result["progress"]["resumed_pieces"] >= 3  # at least 30% of 12 pieces were kept
    assert result["bytes_fetched"] < model.stat().st_size
    assert _sha(hosts[1].data / "models" / "blobs" / f"{_sha(model)}.gguf") == _sha(model)


def _names(data) -> set[str]:
    import sqlite3

    with sqlite3.connect(data / "models" / "index.sqlite3") as db:
        return {n for (n,) in db.execute("SELECT name FROM models")}


def test_a_rotten_source_is_refused_and_the_budget_evicts_the_least_recently_used(lab_factory, tmp_path):
    lab = lab_factory(3)
    hosts = _mesh(lab, tmp_path, 3, "--models-max-gb", "0.07")  # h2 holds one 48 MB model, not two
    a = write_gguf(tmp_path / "a.gguf", size=48 * MB, seed=3)
    b = write_gguf(tmp_path / "b.gguf", size=48 * MB, seed=4)
    for h in hosts[:2]:
        _add(h, a, "a-48M")
    _add(hosts[0], b, "b-48M")
    rotten = hosts[1].data / "models" / "blobs" / f"{_sha(a)}.gguf"
    data = bytearray(rotten.read_bytes())
    for at in range(0, len(data), 4 * 1024 * 1024):
        data[at + 100] ^= 0xFF
    rotten.write_bytes(bytes(data))

    r = hosts[2].mesh("models", "pull", "a-48M", "--json")
    result = json.loads(r.stdout)
    h1 = json.loads(hosts[1].mesh("info", "--json").stdout)["peer"]
    assert 1 <= result["bad_pieces"][h1] <= PER_SOURCE and h1 not in result["progress"]["by_source"]
    assert _sha(hosts[2].data / "models" / "blobs" / f"{_sha(a)}.gguf") == _sha(a)

    hosts[2].mesh("models", "pull", "b-48M")  # a is evicted to make room
    assert _names(hosts[2].data) == {"b-48M"}
    assert not (hosts[2].data / "models" / "blobs" / f"{_sha(a)}.gguf").exists()

    hosts[2].mesh("models", "pin", "b-48M")  # now nothing can make room
    r = hosts[2].mesh("models", "pull", "a-48M", check=False)
    assert r.returncode != 0 and "does not fit the budget" in r.stderr and "unpin" in r.stderr
    assert _names(hosts[2].data) == {"b-48M"} and not any((hosts[2].data / "models" / "partial").iterdir())
