"""What the CLI prints about models: `mesh peers` marks a model on disk (not loaded),
`mesh models list` is a table with holders and where each model is loaded, and a pull's
progress line."""

from __future__ import annotations

from mesh.cli.render import model_row, models_table, peers_table, pull_progress
from mesh.gossip.view import LoadInfo, MemberView, ModelInfo, PeerMeta


def test_peers_marks_a_model_that_is_on_disk_only():
    meta = PeerMeta(models=(ModelInfo("smol", 135_000_000, 2048, 45.0),
                            ModelInfo("gemma", 268_000_000, 2048, 0.0, loaded=False, load_s=1.6)),
                    load=LoadInfo(parallel=1, queue_limit=8))
    out = peers_table([MemberView(peer_id="a" * 26, name="laptop", state="alive", meta=meta)])
    assert "smol, gemma (on disk)" in out


def test_the_models_table_and_a_pull_line():
    sha = "ab" * 32
    doc = {"models": [{"sha256": sha, "name": "gemma", "size": 253_113_024, "parameters": 270_000_000,
                       "quantisation": "Q4_K_M", "context_length": 32768, "family": "gemma3",
                       "holders": ["p" * 26, "q" * 26], "loaded_on": ["q" * 26]}],
           "peers_asked": 3, "unreachable": ["rrrr: timed out"]}
    table = models_table(doc)
    lines = table.splitlines()
    assert lines[0].split() == ["MODEL", "SHA256", "SIZE", "PARAMS", "QUANT", "CTX", "HELD", "BY", "LOADED", "ON"]
    assert "gemma" in lines[2] and sha[:12] in lines[2] and "253.1 MB" in lines[2] and "270M" in lines[2]
    assert "pppppppppppp, qqqqqqqqqqqq" in lines[2] and lines[2].rstrip().endswith("qqqqqqqqqqqq")
    assert "3 peer(s) answered; 1 did not: rrrr: timed out" in table
    assert "(no model in any store yet" in models_table({"models": [], "peers_asked": 1})
    assert model_row({**doc["models"][0], "pinned": True}) == "gemma (abababababab, 253.1 MB, 270M, Q4_K_M, pinned)"
    line = pull_progress({"name": "gemma", "size": 200 * 10**6, "bytes_done": 50 * 10**6, "fetched": 40 * 10**6,
                          "elapsed_s": 2.0, "by_source": {"p": 1, "q": 2}, "pieces": 48, "pieces_done": 12})
    assert "25.0%" in line and "20.0 MB/s" in line and "from 2 peer(s)" in line and "[######" in line


def test_info_lists_the_models_served_on_demand():
    from mesh.cli.render import info_table

    doc = {"peer": "p", "model": {"name": "smol"}, "rpc": {}, "models": [
        {"name": "smol", "state": "loaded (primary)"},
        {"name": "gemma", "state": "loaded", "loads": 2, "load_s": 1.25, "pinned": True},
        {"name": "tiny", "state": "on disk", "loads": 0, "problem": "the engine crashed"}]}
    out = info_table(doc, endpoint="tcp://x:1")
    assert "gemma: loaded, pinned, loaded 2x (last 1.2 s)" in out
    assert "tiny: on disk; last load failed: the engine crashed" in out
