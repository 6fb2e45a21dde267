"""A sweep on the REAL local SLURM cluster of two nodes, submitted as a user would (`python slurm/submit.py
--sweep ... --follow`, no mocks): 3 points of the smoke experiment as ONE job array spread over both nodes;
point 1's element is cancelled mid-run (`scancel <array>_0`); submitting the same sweep again submits that
point alone, which resumes from its checkpoint, while the two finished points are neither resubmitted nor
touched (their run folders byte-identical). The parent/child structure is read back from the MLflow store,
and the UI's compare view of the sweep, in headless Chromium, shows the three runs and their bits/dim.

Cost: three 150-step smoke points (two at once, one per node, on the same 2 cores) plus the resumed one,
about 2 minutes.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time

import mlflow
import pytest
from helpers import (FAST, browse, hostnames, job_id, metrics, mlflow_store, mlflow_ui, resumed_steps, sacct_job,
                     sha256_tree, shown, start, ui_urls, wait, wait_until_idle)

pytestmark = pytest.mark.slow  # jobs on the real SLURM cluster, and the MLflow UI in a browser

LABELS = ["model.hidden=8", "model.hidden=16", "model.hidden=24"]
STEPS = 150


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, smoke_data, two_nodes):
    """Submit the sweep, cancel point 1 mid-run, submit it again: what the tests below check."""
    wait_until_idle()
    base = tmp_path_factory.mktemp("sweep_cluster")
    uri = mlflow_store(base / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("smoke", artifact_location=(base / "artifacts").as_uri())
    root = base / "sw"
    cmd = [sys.executable, "slurm/submit.py", "--exp", "smoke", "--sweep", "model.hidden=8,16,24", "--sweep-name",
           "trio", f"output_dir={root}", f"data.root={smoke_data}", "data.prepare=none",
           f"tracking.tracking_uri={uri}", f"train.max_steps={STEPS}", *FAST, "checkpoint.every=50", "--time", "10",
           "--follow"]
    first_log = base / "first.log"
    proc = start(cmd, first_log)
    array = job_id(first_log, 90, r"as job array (\d+) \(SLURM")
    deadline = time.time() + 240
    while len(metrics(root / LABELS[0])) < 60:  # past its checkpoint at step 50
        assert time.time() < deadline and proc.poll() is None, first_log.read_text()[-3000:]
        time.sleep(0.2)
    subprocess.run(["scancel", f"{array}_0"], check=True)
    first = wait(proc, 400, first_log)
    first_rc = proc.returncode
    elements = {i: sacct_job(f"{array}_{i}") for i in range(3)}
    before = {label: sha256_tree(root / label) for label in LABELS[1:]}
    run_ids = {label: (root / label / "mlflow_run_id").read_text() for label in LABELS}

    again_log = base / "again.log"
    proc = start(cmd, again_log)
    again = wait(proc, 300, again_log)
    return dict(base=base, root=root, uri=uri, array=array, first=first, first_rc=first_rc, elements=elements,
                before=before, run_ids=run_ids, again=again, again_rc=proc.returncode)


def test_sweep_is_one_array_over_both_nodes_and_a_killed_point_resumes_alone(sweep_run):
    s = sweep_run
    root, first, again = s["root"], s["first"], s["again"]
    # One array, three elements, spread over both nodes; the cancelled one is reported, the others finished.
    assert s["first_rc"] == 1, first[-3000:]
    assert f"submitted sweep trio as job array {s['array']} (SLURM, 3 point(s), at most 3 at once, 2 task(s) each)" \
        in first, first[-3000:]
    assert f"point 1 ({LABELS[0]}): job {s['array']}_0 was CANCELLED" in first, first[-3000:]
    states = {i: e["State"].split()[0] for i, e in s["elements"].items()}
    assert states == {0: "CANCELLED", 1: "COMPLETED", 2: "COMPLETED"}, s["elements"]
    nodes = {n for e in s["elements"].values() for n in hostnames(e["NodeList"])}
    assert nodes == {"node1", "node2"}, s["elements"]

    # Submitted again: only point 1, which resumes from its checkpoint; points 2 and 3 untouched.
    assert s["again_rc"] == 0, again[-3000:]
    for n, label in ((2, LABELS[1]), (3, LABELS[2])):
        assert f"point {n} ({label}): complete, not submitted again" in again, again[-3000:]
    m = re.search(r"submitted sweep trio as job (\d+) \(SLURM, 1 point\(s\)", again)  # one point: a plain job
    assert m and m.group(1) != s["array"], again[-3000:]
    assert f"point 1 ({LABELS[0]}): job {m.group(1)} ->" in again
    assert "continued parent run" in again
    for label in LABELS[1:]:
        assert sha256_tree(root / label) == s["before"][label], f"{label} changed"
    assert [r["step"] for r in metrics(root / LABELS[0])] == list(range(1, STEPS + 1))
    logs = "".join(p.read_text(errors="replace") for p in (root / "submitit").glob(f"*/{m.group(1)}_0_log.*"))
    resumed = resumed_steps(logs)
    assert resumed and resumed[0] >= 50, logs[-3000:]

    # MLflow: one parent (FINISHED now that every point is), three children, each point's run reused.
    client = mlflow.MlflowClient(tracking_uri=s["uri"])
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    assert parent.info.run_name == "trio" and parent.info.status == "FINISHED"
    assert parent.data.params == {"model.hidden": "8,16,24"}
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(LABELS) and len(runs) == 4
    for label, child in children.items():
        assert child.info.run_id == s["run_ids"][label] == (root / label / "mlflow_run_id").read_text()
        assert child.info.status == "FINISHED" and child.data.tags["sweep"] == "trio"
        assert child.data.tags["sweep.model.hidden"] == child.data.params["model.hidden"] == label.split("=")[1]
    print(f"array {s['array']}: {s['elements']}; resumed at step {resumed[0]}")


def test_ui_compare_view_of_the_sweep_shows_the_three_runs(sweep_run, chromium):
    s = sweep_run
    client = mlflow.MlflowClient(tracking_uri=s["uri"])
    exp = client.get_experiment_by_name("smoke")
    children = [client.get_run(s["run_ids"][label]) for label in LABELS]
    vals = [c.data.metrics["val_bits_per_dim"] for c in children]
    workdir = s["base"] / "ui"
    workdir.mkdir()
    with mlflow_ui(s["uri"], workdir) as base:
        urls = ui_urls(base, exp.experiment_id, [c.info.run_id for c in children])
        got = browse(chromium, urls, LABELS, workdir, on_experiment=["trio"])
    print(f"screenshots: {workdir / 'experiment.png'} {workdir / 'compare.png'}")
    assert "trio" in got["experiment"]
    for label in LABELS:
        assert label in got["compare"], f"{label} not in the compare view"
    for v, forms in zip(vals, shown(vals)):
        assert any(f in got["compare"] for f in forms), f"val_bits_per_dim {v} not shown in the compare view"
    if got.get("val_row") is not None:  # Playwright: the values sit in the val_bits_per_dim row itself
        assert len(got["val_row"]) == 3, got["val_row"]
        for v, forms in zip(vals, shown(vals)):
            assert any(f in got["val_row"] for f in forms), (v, got["val_row"])
