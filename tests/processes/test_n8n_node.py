"""The n8n node (integrations/n8n) in a real n8n, headless, against a real mesh-peer with
the real default model.

n8n (1.123, from npm) and the node's build come from bin/test's tools step (bin/setup-test-tools runs bin/setup-n8n, into
.n8n/host and integrations/n8n/dist); nothing is installed here. Without them the test is
skipped with the reason, and under CI (CI=true or 1) it fails instead.

The package is put where n8n's community-node installs go (``<user folder>/.n8n/nodes/
node_modules/n8n-nodes-mesh``: package.json and dist, no node_modules, so ``n8n-workflow``
is n8n's own), its credentials (the peer's URL and an API key: the peer asks every caller
for one) are imported with ``n8n import:credentials``, a workflow with
``n8n import:workflow``, and it is run with ``n8n execute --id``. The workflow: a manual
trigger, then Ask, List Peers, and Submit Job -> Get Job Result (its job id taken by an
expression from Submit Job's output). A second workflow asks with a wrong key and must
fail with the peer's 401.

n8n runs with its telemetry, version checks and templates off, and with a preloaded guard
(tests/support/loopback_only.cjs) that refuses and records every connection or DNS lookup
beyond loopback: the test asserts that nothing was recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
N8N = ROOT / ".n8n" / "host" / "node_modules" / ".bin" / "n8n"
PACKAGE = ROOT / "integrations" / "n8n"
BUILT = PACKAGE / "dist" / "nodes" / "Mesh" / "Mesh.node.js"
GUARD = ROOT / "tests" / "support" / "loopback_only.cjs"
MODEL = "SmolLM2-135M-Instruct"
NODE_TYPE = "n8n-nodes-mesh.mesh"


def _unavailable(why: str):
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why}; under CI this test must run")
    pytest.skip(why)


def _check_installed() -> None:
    if shutil.which("node") is None:
        _unavailable("no node on PATH (n8n needs Node 20.19+)")
    if not N8N.exists():
        _unavailable(f"n8n is not installed in {N8N.parents[2]}: run bin/setup-n8n (bin/test runs it)")
    if not BUILT.exists():
        _unavailable("the n8n node is not built: run bin/setup-n8n (or `npm run build` in integrations/n8n)")
    built = BUILT.stat().st_mtime
    sources = [p for d in ("nodes", "credentials") for p in (PACKAGE / d).rglob("*.ts")]
    stale = [str(p.relative_to(PACKAGE)) for p in sources if p.stat().st_mtime > built]
    if stale:
        pytest.fail(f"integrations/n8n/dist is older than {', '.join(stale)}: run bin/setup-n8n to rebuild the node")


def n8n_env(user: Path, net_log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("N8N_", "DB_", "NODE_OPTIONS"))}
    env.update({
        "HOME": str(user),
        "N8N_USER_FOLDER": str(user),
        # nothing leaves the machine: no telemetry, version checks, templates, banners
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_HIRING_BANNER_ENABLED": "false",
        "N8N_DIAGNOSTICS_CONFIG_FRONTEND": "",
        "N8N_DIAGNOSTICS_CONFIG_BACKEND": "",
        "EXTERNAL_FRONTEND_HOOKS_URLS": "",
        "N8N_VERIFIED_PACKAGES_ENABLED": "false",
        "N8N_UNVERIFIED_PACKAGES_ENABLED": "false",
        "N8N_AI_ENABLED": "false",
        "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
        # n8n 1.123's default "vm" engine needs isolated-vm, which needs Node 22
        "N8N_EXPRESSION_ENGINE": "legacy",
        "N8N_RUNNERS_ENABLED": "false",
        "NODE_OPTIONS": f"--require {GUARD}",
        "MESH_TEST_NET_LOG": str(net_log),
        "NO_PROXY": "127.0.0.1,localhost,::1",
    })
    return env


def n8n(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(N8N), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["N8N_USER_FOLDER"])


def execution(stdout: str) -> dict:
    """The execution JSON that ``n8n execute --rawOutput`` prints (after any log lines)."""
    start = stdout.find("\n{")
    return json.loads(stdout if stdout.startswith("{") else stdout[start + 1:])


def outputs(run: dict, node: str) -> list[dict]:
    [node_run] = run["data"]["resultData"]["runData"][node]
    assert node_run["executionStatus"] == "success", node_run
    return [item["json"] for item in node_run["data"]["main"][0]]


def mesh_node(name: str, y: int, params: dict, cred: str) -> dict:
    return {"id": f"node-{name}", "name": name, "type": NODE_TYPE, "typeVersion": 1, "position": [300, y],
            "parameters": params, "credentials": {"meshApi": {"id": cred, "name": cred}}}


def workflow(wf_id: str, cred: str, nodes: list[dict], edges: dict[str, list[str]]) -> dict:
    trigger = {"id": "node-start", "name": "Start", "type": "n8n-nodes-base.manualTrigger", "typeVersion": 1,
               "position": [0, 0], "parameters": {}}
    connections = {src: {"main": [[{"node": dst, "type": "main", "index": 0} for dst in dsts]]}
                   for src, dsts in edges.items()}
    return {"id": wf_id, "name": wf_id, "active": False, "settings": {}, "nodes": [trigger, *nodes],
            "connections": connections}


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    _check_installed()
    data = tmp_path_factory.mktemp("n8n-peer") / "data"
    made = run_mesh("keys", "create", "n8n", data_dir=data)
    assert made.returncode == 0, made.stderr
    p = PeerProcess(data, "--name", "n8n-peer", "--ctx", "1024", "--threads", "1", "--http-open-loopback", "no")
    try:
        info = p.wait_ready()
        yield {"url": info["http"], "key": made.stdout.strip(), "peer_id": info["peer_id"]}
    finally:
        p.stop()


@pytest.fixture(scope="module")
def n8n_home(peer, tmp_path_factory):
    """An n8n user folder with the node installed as a community package and two credentials."""
    user = tmp_path_factory.mktemp("n8n-user")
    installed = user / ".n8n" / "nodes" / "node_modules" / "n8n-nodes-mesh"
    installed.mkdir(parents=True)
    shutil.copy(PACKAGE / "package.json", installed / "package.json")
    shutil.copytree(PACKAGE / "dist", installed / "dist")
    net_log = user / "net.log"
    env = n8n_env(user, net_log)
    creds = [
        {"id": "meshcredgood0001", "name": "meshcredgood0001", "type": "meshApi",
         "data": {"url": peer["url"] + "/", "apiKey": peer["key"]}},
        {"id": "meshcredbad00001", "name": "meshcredbad00001", "type": "meshApi",
         "data": {"url": peer["url"], "apiKey": "mesh-not-a-key"}},
    ]
    (user / "credentials.json").write_text(json.dumps(creds))
    r = n8n(env, "import:credentials", f"--input={user / 'credentials.json'}")
    assert r.returncode == 0, r.stdout + r.stderr
    return {"env": env, "user": user, "net_log": net_log}


def run_workflow(home: dict, wf: dict) -> subprocess.CompletedProcess:
    path = home["user"] / f"{wf['id']}.json"
    path.write_text(json.dumps([wf]))
    r = n8n(home["env"], "import:workflow", f"--input={path}")
    assert r.returncode == 0, r.stdout + r.stderr
    return n8n(home["env"], "execute", f"--id={wf['id']}", "--rawOutput")


def test_workflow_asks_lists_peers_and_runs_a_job(peer, n8n_home):
    good = "meshcredgood0001"
    wf = workflow("meshnodetest0001", good, [
        mesh_node("Ask", 0, {"operation": "ask", "prompt": "Name a fruit.",
                             "options": {"maxTokens": 16, "temperature": 0, "localOnly": True,
                                         "noEscalate": True, "threshold": 0.5}}, good),
        mesh_node("Peers", 200, {"operation": "listPeers"}, good),
        mesh_node("Submit", 400, {"operation": "submitJob", "prompt": "Name a colour.", "model": MODEL,
                                  "options": {"maxTokens": 12, "localOnly": True}}, good),
        mesh_node("Result", 600, {"operation": "getJob", "jobId": "={{ $json.jobId }}", "wait": True,
                                  "waitSeconds": 120}, good),
    ], {"Start": ["Ask", "Peers", "Submit"], "Submit": ["Result"]})
    r = run_workflow(n8n_home, wf)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    run = execution(r.stdout)
    assert run["status"] == "success" and run["finished"] is True

    [ask] = outputs(run, "Ask")
    assert isinstance(ask["text"], str) and ask["text"].strip()
    assert ask["peer"] == peer["peer_id"] and ask["peerName"] == "n8n-peer"
    assert ask["model"] == MODEL
    assert isinstance(ask["confidence"], float) and 0 <= ask["confidence"] <= 1
    assert ask["escalated"] is False
    [rung] = ask["path"]  # no_escalate: one rung, the answer kept
    assert rung["peer"] == peer["peer_id"] and rung["model"] == MODEL and rung["answered"] is True
    assert rung["confidence"] == ask["confidence"]

    [member] = outputs(run, "Peers")
    assert member["peerId"] == peer["peer_id"] and member["name"] == "n8n-peer"
    assert member["self"] is True and member["state"] == "alive" and member["model"] == MODEL

    [submitted] = outputs(run, "Submit")
    assert submitted["jobId"] and submitted["state"] in ("queued", "running", "done")
    assert submitted["prompt"] == "Name a colour."

    [result] = outputs(run, "Result")
    assert result["jobId"] == submitted["jobId"] and result["state"] == "done" and result["done"] is True
    assert isinstance(result["text"], str) and result["text"].strip()
    assert result["peer"] == peer["peer_id"] and result["model"] == MODEL
    assert 0 <= result["confidence"] <= 1 and result["path"][0]["model"] == MODEL

    assert not n8n_home["net_log"].exists(), "n8n tried to reach beyond loopback:\n" + n8n_home["net_log"].read_text()


def test_a_wrong_key_fails_the_workflow_with_the_peers_401(peer, n8n_home):
    wf = workflow("meshnodetest0002", "meshcredbad00001", [
        mesh_node("Ask", 0, {"operation": "ask", "prompt": "Hi", "options": {"maxTokens": 4}}, "meshcredbad00001"),
    ], {"Start": ["Ask"]})
    r = run_workflow(n8n_home, wf)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-4000:]
    assert "Mesh peer answered 401" in out and "Incorrect API key" in out, out[-4000:]
    assert not n8n_home["net_log"].exists(), "n8n tried to reach beyond loopback:\n" + n8n_home["net_log"].read_text()
