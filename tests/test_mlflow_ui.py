"""The MLflow UI, in a real headless Chromium, shows both smoke runs and their val_bits_per_dim.

Needs Debian's Chromium (`apt-get install -y chromium`); drives it with Playwright's Python package when
installed (`pip install playwright`; never `playwright install`: the system Chromium is used), else with
Chromium's own `--headless --dump-dom`. Skips, saying why, only when no Chromium is installed.
Screenshots are left in the test's temp folder (path printed).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

import mlflow
import pytest
from helpers import free_port, make_smoke_store

pytestmark = pytest.mark.slow  # the MLflow UI in a headless browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90       # `mlflow ui` takes 15-30 s to answer on these 2-core machines
PAGE_WAIT_S = 45


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (install it with `apt-get install -y chromium`); "
                    "the MLflow UI browser test cannot run")
    return CHROMIUM


@pytest.fixture(scope="module")
def ui(chromium, smoke_data, tmp_path_factory):
    """`mlflow ui` on 127.0.0.1 (free port) over the two-smoke-run store; killed at the end."""
    db = make_smoke_store(tmp_path_factory.getbasetemp() / "report_smoke_store", smoke_data)
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "train"]
    assert len(runs) == 2
    port = free_port()
    workdir = tmp_path_factory.mktemp("mlflow_ui")
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            assert proc.poll() is None, (workdir / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"mlflow ui did not answer in {SERVER_START_S} s"
            time.sleep(0.3)
        yield base, exp.experiment_id, runs, workdir
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # the server's own session: uvicorn and its job runner
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def _urls(base: str, exp_id: str, run_ids: List[str]) -> Dict[str, str]:
    # workflowType=machine_learning: MLflow 3 otherwise opens an experiment on its GenAI (traces) pages.
    return {"experiment": f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning",
            "compare": f"{base}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}"}


def _shown(values: List[float]) -> List[List[str]]:
    """How the UI may print each value (it rounds)."""
    return [[f"{v:.3f}", f"{v:.4g}", f"{v:.4f}", f"{v:.5g}"] for v in values]


def _with_playwright(chromium: str, urls: Dict[str, str], names: List[str], workdir: Path) -> Dict[str, object]:
    from playwright.sync_api import sync_playwright
    result: Dict[str, object] = {}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(workdir / "profile"), executable_path=chromium, headless=True, args=FLAGS[1:],
            viewport={"width": 1600, "height": 1000}, timeout=PAGE_WAIT_S * 1000)
        try:
            page = ctx.new_page()
            page.set_default_timeout(PAGE_WAIT_S * 1000)
            page.goto(urls["experiment"])
            for n in names:
                page.get_by_text(n).first.wait_for()
            page.screenshot(path=str(workdir / "experiment.png"))
            result["experiment"] = page.inner_text("body")
            page.goto(urls["compare"])
            page.get_by_text("val_bits_per_dim").first.wait_for()
            page.get_by_text(names[0]).first.wait_for()
            page.wait_for_timeout(1000)  # let the virtualised metric grid render
            # The page scrolls inside its own container: bring the metrics table into the screenshot (scrolling
            # a label inside the virtualised grid would shift labels against values, so scroll to the section
            # below it).
            page.get_by_text("Artifacts", exact=True).first.scroll_into_view_if_needed()
            page.screenshot(path=str(workdir / "compare.png"))
            result["compare"] = page.inner_text("body")
            # The metric table is a virtualised grid: the row of values sits at the label's `top`.
            result["val_row"] = page.evaluate("""() => {
                const label = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === 'val_bits_per_dim'
                                                                        && a.parentElement.style.top);
                if (!label) return null;
                const top = label.parentElement.style.top;
                let node = label.parentElement, grid = null;
                while (node && !grid) {
                    node = node.parentElement;
                    grid = node && [...node.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')]
                        .find(g => !g.contains(label));
                }
                if (!grid) return null;
                const cells = [...grid.children].filter(d => d.style.top === top);
                return cells.sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
                            .map(d => d.textContent.trim());
            }""")
        finally:
            ctx.close()
    return result


def _with_chromium_cli(chromium: str, urls: Dict[str, str], workdir: Path) -> Dict[str, object]:
    result: Dict[str, object] = {}
    for key, url in urls.items():
        common = [chromium, *FLAGS, f"--user-data-dir={workdir / ('profile-' + key)}", "--virtual-time-budget=20000"]
        subprocess.run(common + ["--window-size=1600,1400", f"--screenshot={workdir / (key + '.png')}", url],
                       capture_output=True, timeout=PAGE_WAIT_S)
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=PAGE_WAIT_S)
        result[key] = dom.stdout
    return result


def test_ui_shows_both_runs_and_their_val_bits_per_dim(ui, chromium):
    base, exp_id, runs, workdir = ui
    names = [r.info.run_name for r in runs]
    vals = [r.data.metrics["val_bits_per_dim"] for r in runs]
    urls = _urls(base, exp_id, [r.info.run_id for r in runs])
    try:
        import playwright  # noqa: F401
        got = _with_playwright(chromium, urls, names, workdir)
    except ImportError:
        got = _with_chromium_cli(chromium, urls, workdir)
    print(f"screenshots: {workdir / 'experiment.png'} {workdir / 'compare.png'}")
    for n in names:
        assert n in got["experiment"], f"run {n} not on the experiment page ({urls['experiment']})"
        assert n in got["compare"], f"run {n} not in the compare view"
    assert "val_bits_per_dim" in got["compare"]
    for v, forms in zip(vals, _shown(vals)):
        assert any(f in got["compare"] for f in forms), f"val_bits_per_dim {v} not shown in the compare view"
    if got.get("val_row") is not None:  # Playwright: the values sit in the val_bits_per_dim row itself
        row = got["val_row"]
        assert len(row) == 2, row
        for v, forms in zip(vals, _shown(vals)):
            assert any(f in row for f in forms), (v, row)
    for shot in ("experiment.png", "compare.png"):
        assert (workdir / shot).stat().st_size > 10_000, f"{shot}: blank screenshot?"
