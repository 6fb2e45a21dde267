"""The MLflow UI, in a real headless Chromium, shows both smoke runs and their val_bits_per_dim.

Needs Debian's Chromium (`apt-get install -y chromium`); drives it with Playwright's Python package when
installed (`pip install playwright`; never `playwright install`: the system Chromium is used), else with
Chromium's own `--headless --dump-dom`. Skips, saying why, only when no Chromium is installed.
Screenshots are left in the test's temp folder (path printed).
"""
from __future__ import annotations

import mlflow
import pytest
from helpers import browse, make_smoke_store, mlflow_ui, shown, ui_urls

pytestmark = pytest.mark.slow  # the MLflow UI in a headless browser


@pytest.fixture(scope="module")
def ui(chromium, smoke_data, tmp_path_factory):
    """`mlflow ui` on 127.0.0.1 (free port) over the two-smoke-run store; killed at the end."""
    db = make_smoke_store(tmp_path_factory.getbasetemp() / "report_smoke_store", smoke_data)
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "train"]
    assert len(runs) == 2
    workdir = tmp_path_factory.mktemp("mlflow_ui")
    with mlflow_ui(uri, workdir) as base:
        yield base, exp.experiment_id, runs, workdir


def test_ui_shows_both_runs_and_their_val_bits_per_dim(ui, chromium):
    base, exp_id, runs, workdir = ui
    names = [r.info.run_name for r in runs]
    vals = [r.data.metrics["val_bits_per_dim"] for r in runs]
    urls = ui_urls(base, exp_id, [r.info.run_id for r in runs])
    got = browse(chromium, urls, names, workdir)
    print(f"screenshots: {workdir / 'experiment.png'} {workdir / 'compare.png'}")
    for n in names:
        assert n in got["experiment"], f"run {n} not on the experiment page ({urls['experiment']})"
        assert n in got["compare"], f"run {n} not in the compare view"
    assert "val_bits_per_dim" in got["compare"]
    for v, forms in zip(vals, shown(vals)):
        assert any(f in got["compare"] for f in forms), f"val_bits_per_dim {v} not shown in the compare view"
    if got.get("val_row") is not None:  # Playwright: the values sit in the val_bits_per_dim row itself
        row = got["val_row"]
        assert len(row) == 2, row
        for v, forms in zip(vals, shown(vals)):
            assert any(f in row for f in forms), (v, row)
    for shot in ("experiment.png", "compare.png"):
        assert (workdir / shot).stat().st_size > 10_000, f"{shot}: blank screenshot?"
