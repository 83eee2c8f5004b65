"""Pulling a model between real peers on loopback (signed RPC, the real stores): from
one and from two sources, a source with a corrupted file refused and not asked again,
a model nobody has, the mesh-wide list, and the local-only methods."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mesh import Client
from mesh.errors import InvalidRequest, ModelNotFound
from mesh.models.manifest import MIN_PIECE
from mesh.models.service import PER_SOURCE
from mesh.testing import ScriptedBackend
from support.gguf_files import write_gguf
from support.loopmesh import run, start_mesh, wait_for


def _model_samples(peer) -> dict:
    """The peer's /metrics samples (``mesh_model_*`` among them), as scraped."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(peer.metrics.registry).decode()):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _small_pieces(peers):
    for p in peers:
        p.models.piece_size = MIN_PIECE  # many pieces from a small file


async def _mesh(tmp_path, n):
    peers = await start_mesh(tmp_path, [ScriptedBackend(["ok"], model=f"m{i}") for i in range(n)])
    _small_pieces(peers)
    await wait_for(lambda: all(len(p.membership_service.live_addresses()) == n - 1 for p in peers))
    return peers


async def _stop(peers, clients=()):
    for c in clients:
        await c.aclose()
    for p in peers:
        await p.stop(grace_s=0)


def test_a_model_is_pulled_from_two_peers_and_is_the_same_file(tmp_path):
    async def main():
        peers = await _mesh(tmp_path, 3)
        src = write_gguf(tmp_path / "tiny-1M-F32.gguf", size=1_500_000)
        a = peers[0].models.add(src)
        peers[1].models.add(src)
        client = Client(tmp_path / "p2")
        try:
            listed = await client.amodels()
            row = next(r for r in listed["models"] if r["sha256"] == a.sha)
            assert sorted(row["holders"]) == sorted([peers[0].identity.peer_id_text, peers[1].identity.peer_id_text])
            assert row["name"] == "tiny-1M" and row["size"] == a.size and listed["peers_asked"] == 3

            seen = []
            result = await client.apull("tiny-1M", on_progress=seen.append)
            got = peers[2].models.resolve("tiny-1M")
            assert got.sha == a.sha and peers[2].models.path(a.sha).read_bytes() == src.read_bytes()
            by_source = result["progress"]["by_source"]
            assert set(by_source) == {peers[0].identity.peer_id_text, peers[1].identity.peer_id_text}
            assert sum(by_source.values()) == result["progress"]["pieces"] > 2
            assert seen and seen[-1]["pieces_done"] == result["progress"]["pieces"]
            served = sum(p.model_service.counts["pieces_served"] for p in peers[:2])
            assert served == result["progress"]["pieces"]
            by_bulk = sum(p.model_service.counts["bulk_pieces_served"] for p in peers[:2])
            assert by_bulk == served  # every piece over the bulk stream, none as RPC chunks
            scraped = [_model_samples(p) for p in peers]
            assert sum(x[("mesh_model_pieces_served_total", (("path", "bulk"),))] for x in scraped) == served
            assert sum(x[("mesh_model_pieces_served_total", (("path", "rpc"),))] for x in scraped) == 0
            assert scraped[2][("mesh_model_pulls_total", (("result", "ok"),))] == 1
            assert sum(x[("mesh_model_bytes_served_total", ())] for x in scraped) == a.size
            again = await client.apull(a.sha)
            assert again["already"] is True
        finally:
            await _stop(peers, [client])

    run(main())


def test_a_source_serving_a_corrupted_piece_is_dropped_and_the_pull_completes(tmp_path):
    async def main():
        peers = await _mesh(tmp_path, 3)
        src = write_gguf(tmp_path / "tiny-1M-F32.gguf", size=1_500_000)
        good = peers[0].models.add(src)
        peers[1].models.add(src)
        blob = peers[1].models.path(good.sha)  # bit rot on p1's disk, after its manifest was made
        data = bytearray(blob.read_bytes())
        for at in range(0, len(data), MIN_PIECE):
            data[at] ^= 0xFF
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        client = Client(tmp_path / "p2")
        try:
            result = await client.apull(good.sha)
            bad_peer = peers[1].identity.peer_id_text
            # refused; asked for nothing more once one was refused (a second request may
            # have been in flight already: PER_SOURCE workers per source)
            bad = result["bad_pieces"][bad_peer]
            assert 1 <= bad <= PER_SOURCE and peers[2].model_service.counts["bad_pieces"] == bad
            assert peers[1].model_service.counts["pieces_served"] == bad
            assert bad_peer not in result["progress"]["by_source"]
            assert peers[2].models.path(good.sha).read_bytes() == src.read_bytes()
        finally:
            await _stop(peers, [client])

    run(main())


def test_sources_without_a_usable_bulk_stream_are_asked_over_rpc(tmp_path):
    """p0 offers no bulk stream (an older peer); p1's bulk port cannot be reached (a
    firewall letting only the RPC port through): the pull completes over RPC from both."""
    async def main():
        peers = await _mesh(tmp_path, 3)
        src = write_gguf(tmp_path / "tiny-1M-F32.gguf", size=1_500_000)
        a = peers[0].models.add(src)
        peers[1].models.add(src)
        peers[0].model_service.bulk = None
        peers[1].bulk.close()
        client = Client(tmp_path / "p2")
        try:
            result = await client.apull(a.sha)
            assert set(result["progress"]["by_source"]) == {p.identity.peer_id_text for p in peers[:2]}
            assert peers[2].models.path(a.sha).read_bytes() == src.read_bytes()
            assert sum(p.model_service.counts["pieces_served"] for p in peers[:2]) == result["progress"]["pieces"]
            assert sum(p.model_service.counts["bulk_pieces_served"] for p in peers[:2]) == 0
            rpc = sum(_model_samples(p)[("mesh_model_pieces_served_total", (("path", "rpc"),))] for p in peers[:2])
            assert rpc == result["progress"]["pieces"]
        finally:
            await _stop(peers, [client])

    run(main())


def test_a_model_nobody_has_is_a_clear_error_and_nothing_is_written(tmp_path):
    async def main():
        peers = await _mesh(tmp_path, 2)
        client = Client(tmp_path / "p1")
        try:
            with pytest.raises(ModelNotFound, match="no peer in the mesh has a model 'nope'"):
                await client.apull("nope")
            assert peers[1].models.list() == [] and peers[1].models.partials() == []
        finally:
            await _stop(peers, [client])

    run(main())


def test_changing_a_peers_store_is_for_its_own_machine_only(tmp_path):
    async def main():
        peers = await _mesh(tmp_path, 2)
        src = write_gguf(tmp_path / "tiny-1M-F32.gguf", size=200_000)
        client = Client(tmp_path / "p1")
        try:
            added = await client.acall("models.add", {"path": str(src), "name": "tiny"})
            assert added["model"]["name"] == "tiny" and peers[1].models.resolve("tiny")
            pinned = await client.acall("models.pin", {"model": "tiny", "pinned": True})
            assert pinned["model"]["pinned"] is True
            # p0 asking p1 to import a file of p1's, or to pull, is refused
            address = peers[0].membership_service.live_addresses()[peers[1].identity.peer_id]
            for method, args in [("models.add", {"path": str(src)}), ("models.rm", {"model": "tiny"}),
                                 ("models.mesh", {})]:
                with pytest.raises(InvalidRequest, match="for the mesh CLI on this peer's machine"):
                    await peers[0].pool.client(address).call(method, args, timeout_s=5)
            removed = await client.acall("models.rm", {"model": "tiny"})
            assert removed["model"]["name"] == "tiny" and peers[1].models.list() == []
        finally:
            await _stop(peers, [client])

    run(main())
