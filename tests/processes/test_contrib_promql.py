"""The Grafana dashboard (contrib/grafana/mesh.json) and the alert rules
(contrib/prometheus/alerts.yml) against a real Prometheus scraping two real mesh-peer
processes (alpha, and beta joined to it) with the real model, after a prompt at each.

- `promtool check rules` accepts the rules, and Prometheus loads and evaluates each one
  without error; each has a `for`, a severity and a summary and description.
- Every PromQL expression of the dashboard (Grafana's variables substituted as Grafana
  would for "All") and of the rules is sent to Prometheus's query API and succeeds; the
  dashboard's return data.
- Every metric each expression reads exists in what Prometheus scraped, with every label
  it matches on, and every value it matches exactly: a renamed metric, label or state
  breaks the build. The last test shows the check catching such renames.

Prometheus listens on 127.0.0.1 only, keeps its data in a temporary dir and is killed at
the end (and with this process, should it die). Needs Debian's `prometheus` package
(bin/setup-test-tools, run by bin/test, installs it as root with apt-get); without it the tests are skipped
with that reason, and under CI (CI=true or 1) they fail instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support.peerproc import PeerProcess, free_port, run_mesh, wait_until
from support.promql import selectors

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "mesh.json"
RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
PEER_ARGS = ("--ctx", "512", "--threads", "1")
JOB = "mesh"  # the scrape job the rules expect
# What Grafana puts for its variables: "All" is the dashboard's allValue, the intervals
# are what it would pick for a short range at this scrape interval.
GRAFANA_VARS = {"datasource": "prometheus", "job": ".+", "instance": ".+",
                "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
SEVERITIES = ("critical", "warning", "info")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        why = f"no {tool} on PATH (Debian's prometheus package; bin/setup-test-tools, run by bin/test, installs it as root with apt-get)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{why}; under CI this test must run")
        pytest.skip(why)
    return path


def die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params) -> dict:
        url = self.base + "/api/v1/" + path + "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query is a 400 with a JSON body
            return json.loads(e.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr, time=f"{time.time():.3f}")

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values")["data"])

    def series(self, name: str) -> list[dict]:
        return self.api("series", **{"match[]": name, "start": f"{time.time() - 3600:.0f}"})["data"]


def substitute(expr: str) -> str:
    """Grafana's template variables ($x, ${x}, ${x:opt}) replaced by GRAFANA_VARS."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARS:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARS[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels included) and every
    query variable (its label_values selector), variables substituted."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", substitute(t["expr"])))
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
            assert m, f"variable {v['name']}: only label_values(selector, label) is checked here: {q!r}"
            out.append((f"variable ${v['name']}", f"group by ({m.group(2)}) ({substitute(m.group(1))})"))
    return out


def check(prom: Prometheus, queries: list[tuple[str, str]], *, need_data: bool) -> list[str]:
    """Problems with these queries: not accepted by Prometheus, reading a metric, label or
    label value Prometheus never scraped, or (need_data) returning nothing."""
    problems, names, seen = [], prom.names(), {}
    for where, expr in queries:
        r = prom.query(expr)
        if r.get("status") != "success":
            problems.append(f"{where}: Prometheus refused {expr!r}: {r.get('errorType')}: {r.get('error')}")
            continue
        if need_data and not r["data"]["result"]:
            problems.append(f"{where}: no data for {expr!r}")
        for sel in selectors(expr):
            if sel.name is None or sel.name not in names:
                problems.append(f"{where}: metric {sel.name!r} was never scraped (in {expr!r})")
                continue
            if sel.name not in seen:
                seen[sel.name] = prom.series(sel.name)
            for m in sel.matchers:
                values = {s[m.label] for s in seen[sel.name] if m.label in s}
                if not values:
                    problems.append(f"{where}: {sel.name} has no label {m.label!r} (in {expr!r})")
                elif m.op == "=" and m.value and m.value not in values:
                    problems.append(f"{where}: {sel.name} never has {m.label}={m.value!r}, only "
                                    f"{sorted(values)} (in {expr!r})")
    return problems


def ask(base: str, prompt: str) -> None:
    req = urllib.request.Request(base + "/api/ask", data=json.dumps({"prompt": prompt, "max_tokens": 6}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert "event: final" in r.read().decode()


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    prometheus, _ = require("prometheus"), require("promtool")
    root = tmp_path_factory.mktemp("promql")
    peers = [PeerProcess(root / "alpha", "--name", "alpha", *PEER_ARGS)]
    proc = None
    try:
        seed = peers[0].wait_ready()["endpoint"].removeprefix("tcp://")
        token = run_mesh("invite", data_dir=root / "alpha")
        assert token.returncode == 0, token.stderr
        peers.append(PeerProcess(root / "beta", "--name", "beta", "--join-token", token.stdout.strip(),
                                 "--join", seed, *PEER_ARGS))
        urls = [peers[0].info["http"], peers[1].wait_ready()["http"]]
        for url, prompt in zip(urls, ("Name a colour.", "Name a fruit.")):
            ask(url, prompt)

        port = free_port()
        targets = json.dumps([u.removeprefix("http://") for u in urls])
        (root / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{json.dumps(str(RULES))}]\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs: [{{targets: {targets}}}]\n")
        log = open(root / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        p = Prometheus(f"http://127.0.0.1:{port}")

        def scraped() -> bool:
            assert proc.poll() is None, (root / "prometheus.log").read_text()
            try:
                # both peers up, their answers counted, and enough scrapes for a 1m rate
                r = p.query(f'count(count_over_time(up{{job="{JOB}"}}[1m]) >= 4 and up == 1) == 2 '
                            "and on () sum(mesh_tokens_generated_total) > 0")
                rules = p.api("rules")["data"]["groups"]
            except OSError:
                return False
            return bool(r["data"]["result"]) and all(  # Go's zero time until first evaluated
                not r["lastEvaluation"].startswith("0001") for g in rules for r in g["rules"])
        wait_until(scraped, 60)
        yield p
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for peer in peers:
            peer.stop()


def test_promtool_accepts_the_rules_and_each_has_for_severity_and_what_to_do():
    r = subprocess.run([require("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = RULES.read_text()
    assert len(re.findall(r"^\s+- alert: ", text, re.M)) == len(re.findall(r"^\s+for: ", text, re.M))


def test_every_dashboard_and_rule_query_runs_on_what_the_peers_export(prom):
    dashboard = json.loads(DASHBOARD.read_text())
    ds = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds and ds[0]["query"] == "prometheus"
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 30
    problems = check(prom, queries, need_data=True)
    assert not problems, "\n".join(problems)

    groups = prom.api("rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    names = {r["name"] for r in rules}
    for wanted in ("MeshPeerDown", "MeshHighErrorRate", "MeshHighEscalationRate", "MeshQueueSaturated",
                   "MeshCertificateExpiresSoon"):
        assert wanted in names
    for r in rules:
        assert r["type"] == "alerting" and r["health"] == "ok", r
        assert r["duration"] > 0, r["name"]
        assert r["labels"].get("severity") in SEVERITIES, r["name"]
        assert r["annotations"].get("summary") and len(r["annotations"].get("description", "")) > 80, r["name"]
        assert r["state"] == "inactive", f"{r['name']} fires on a healthy mesh: {r}"
    problems = check(prom, [(f"rule {r['name']}", r["query"]) for r in rules], need_data=False)
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_renamed_metric_label_or_state(prom):
    dashboard = DASHBOARD.read_text()
    renamed = (dashboard.replace("mesh_tokens_generated_total", "mesh_generated_tokens_total")
               .replace('state=\\"waiting\\"', 'state=\\"queued\\"')
               .replace("sum by (outcome) (rate(mesh_requests_total{", "sum by (outcome) (rate(mesh_requests_total{result=~\\\".+\\\", "))
    assert renamed.count("mesh_generated_tokens_total") and "queued" in renamed and "result=~" in renamed
    problems = "\n".join(check(prom, dashboard_queries(json.loads(renamed)), need_data=True))
    assert "metric 'mesh_generated_tokens_total' was never scraped" in problems
    assert "mesh_backend_requests never has state='queued'" in problems
    assert "mesh_requests_total has no label 'result'" in problems
    rule = [("rule", "mesh_certificate_expiry_seconds_total - time() < 86400")]
    assert "was never scraped" in check(prom, rule, need_data=False)[0]
