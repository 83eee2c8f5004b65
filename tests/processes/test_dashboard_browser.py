"""The dashboard in a real browser (headless Chromium driven by Playwright) against a
running three-peer mesh of real mesh-peer processes on loopback with the real model:
the page loads without console errors, shows the three peers alive, shows one as
suspect or dead after it is killed with SIGKILL, and streams an answer typed into its
prompt box. A screenshot is kept in $MESH_TEST_ARTIFACTS (default: pytest's tmp dir).

Needs Debian's chromium at /usr/bin/chromium (bin/test installs it when it can);
without it the test is skipped with that reason, and under CI (CI=true or 1) it fails
instead: in CI every test runs.
"""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from support.peerproc import PeerProcess, run_mesh

pytestmark = [pytest.mark.subprocess, pytest.mark.model]

CHROMIUM = os.environ.get("MESH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PEER_ARGS = ("--ctx", "512", "--threads", "1")


def start_mesh(root: Path) -> list[PeerProcess]:
    """alpha creates the mesh; beta and gamma enrol with invites from it and join through it."""
    a = PeerProcess(root / "alpha", "--name", "alpha", *PEER_ARGS)
    peers = [a]
    info = a.wait_ready()
    seed = info["endpoint"].removeprefix("tcp://")
    for name in ("beta", "gamma"):
        r = run_mesh("invite", data_dir=root / "alpha")
        assert r.returncode == 0, r.stderr
        p = PeerProcess(root / name, "--name", name, "--join-token", r.stdout.strip(), "--join", seed, *PEER_ARGS)
        peers.append(p)
        p.wait_ready()
    return peers


def artifacts_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("MESH_TEST_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_dashboard_shows_the_mesh_live_and_streams_an_answer(tmp_path):
    if not Path(CHROMIUM).exists():
        why = f"no chromium at {CHROMIUM} (bin/test installs it when run as root with apt-get)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{why}; under CI this test must run")
        pytest.skip(why)
    from playwright.sync_api import expect, sync_playwright

    peers = start_mesh(tmp_path)
    errors: list[str] = []
    try:
        url = peers[0].info["http"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.goto(url + "/", wait_until="domcontentloaded")

                # the three peers, all alive (gossip may take a moment to spread to alpha)
                cards = page.locator("#peers article.peer")
                expect(cards).to_have_count(3, timeout=30_000)
                for name in ("alpha", "beta", "gamma"):
                    expect(page.locator(f'article.peer[data-peer-name="{name}"]')).to_have_attribute(
                        "data-state", "alive", timeout=30_000)
                expect(page.locator('article.peer[data-peer-name="alpha"] .peer-you')).to_have_text("this peer")
                expect(page.locator("#conn")).to_have_attribute("data-state", "live")
                expect(page.locator('article.peer[data-peer-name="beta"] .peer-model')).to_contain_text("SmolLM2")

                # a prompt typed into the box streams an answer, then says who answered
                page.fill("#prompt", "Name three fruits.")
                page.fill("#max-tokens", "24")
                page.click("#ask-button")
                expect(page.locator("#answer-meta")).to_have_attribute("data-done", "1", timeout=60_000)
                assert page.locator("#answer-text").inner_text().strip()
                expect(page.locator("#answer-meta")).to_contain_text("answered by")
                expect(page.locator("#answer-meta")).to_contain_text(re.compile(r"confidence \d\.\d\d"))
                # ... and appears in the recent requests with who answered
                expect(page.locator("#recent tr[data-seq]")).to_have_count(1, timeout=5_000)
                row = page.locator("#recent tr[data-seq]").first
                expect(row).to_contain_text("Name three fruits.")
                expect(row).to_contain_text("SmolLM2")
                expect(row.locator("td.outcome-ok")).to_have_text("ok")
                # the charts of the last minutes: the request counted, and a speed chart for who answered it
                expect(page.locator('#charts [data-chart="escalations"]')).to_contain_text("1 · 0 escalated")
                peer_chart = page.locator('#charts [data-chart="peer"]')
                expect(peer_chart).to_have_count(1)
                expect(peer_chart).to_contain_text("tok/s")
                expect(peer_chart.locator("svg path.line.tps")).to_have_count(1)

                # SIGKILL gamma: it is shown suspect or dead within the gossip timeout, no reload
                killed_at = time.monotonic()
                peers[2].signal(signal.SIGKILL)
                peers[2].proc.wait(10)
                expect(page.locator('article.peer[data-peer-name="gamma"]')).to_have_attribute(
                    "data-state", re.compile("suspect|dead"), timeout=15_000)
                noticed_s = time.monotonic() - killed_at
                expect(page.locator('article.peer[data-peer-name="gamma"]')).to_have_attribute(
                    "data-state", "dead", timeout=20_000)
                expect(page.locator("#stat-peers")).to_have_text("2")
                expect(page.locator("#stat-peers-sub")).to_contain_text("1 dead")
                for name in ("alpha", "beta"):
                    expect(page.locator(f'article.peer[data-peer-name="{name}"]')).to_have_attribute(
                        "data-state", "alive")

                shot = artifacts_dir(tmp_path) / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"\ndashboard screenshot: {shot} (gamma noticed {noticed_s:.1f}s after SIGKILL)")
            finally:
                browser.close()
        assert errors == [], errors
    finally:
        for p in peers:
            p.stop()
