"""`mlflow ui` on 127.0.0.1 and a real headless Chromium looking at it (tests/test_mlflow_ui.py, the sweep's
cluster test). Debian's Chromium (`apt-get install -y chromium`), driven by Playwright's Python package when
installed (never `playwright install`: the system Chromium is used), else by `chromium --headless --dump-dom`."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .launch import free_port

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 90       # `mlflow ui` takes 15-30 s to answer on these 2-core machines
PAGE_WAIT_S = 45


@contextlib.contextmanager
def mlflow_ui(uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow ui` over store `uri` on a free port of 127.0.0.1; yields its base URL; killed at the end."""
    port = free_port()
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
        yield base
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


def ui_urls(base: str, exp_id: str, run_ids: List[str]) -> Dict[str, str]:
    # workflowType=machine_learning: MLflow 3 otherwise opens an experiment on its GenAI (traces) pages.
    return {"experiment": f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning",
            "compare": f"{base}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([exp_id])}"}


def shown(values: List[float]) -> List[List[str]]:
    """How the UI may print each value (it rounds)."""
    return [[f"{v:.3f}", f"{v:.4g}", f"{v:.4f}", f"{v:.5g}"] for v in values]


def _with_playwright(chromium: str, urls: Dict[str, str], names: List[str], on_experiment: List[str],
                     workdir: Path) -> Dict[str, object]:
    from playwright.sync_api import sync_playwright  # optional: the Chromium CLI is the fallback
    result: Dict[str, object] = {}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(workdir / "profile"), executable_path=chromium, headless=True, args=FLAGS[1:],
            viewport={"width": 1600, "height": 1000}, timeout=PAGE_WAIT_S * 1000)
        try:
            page = ctx.new_page()
            page.set_default_timeout(PAGE_WAIT_S * 1000)
            page.goto(urls["experiment"])
            for n in on_experiment:
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


def browse(chromium: str, urls: Dict[str, str], names: List[str], workdir: Path,
           on_experiment: Optional[List[str]] = None) -> Dict[str, object]:
    """The text of the experiment page and the compare view (and, with Playwright, the cells of the compare
    view's val_bits_per_dim row, left to right); screenshots `experiment.png`, `compare.png` in `workdir`.
    Waits for `names` (the compared runs) and `on_experiment` (default: `names`; a sweep's experiment page
    shows its parent run, the children folded under it)."""
    if importlib.util.find_spec("playwright") is None:  # optional: the Chromium CLI is the fallback
        return _with_chromium_cli(chromium, urls, workdir)
    return _with_playwright(chromium, urls, names, names if on_experiment is None else on_experiment, workdir)
