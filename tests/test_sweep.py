"""Sweeps (slurm/sweep.py): the expansion of a grid into validated points, saved sweeps, and what submit.py
prints for a sweep's dry run. Running one: locally below (slow), on the real 2-node cluster as one job array
in tests/test_sweep_cluster.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from helpers import REPO, mlflow_store

from pipeline.config import ConfigError
from pipeline.tracking import report, sweep_report, tracker
from slurm import sweep


def _spec(tmp_path: Path, *flags: str, exp: str = "smoke") -> sweep.SweepSpec:
    return sweep.spec_from_args(exp, list(flags), None, None)


def test_points_are_the_cartesian_product_each_validated_in_its_own_folder(tmp_path):
    spec = _spec(tmp_path, "model.layers=1,2,3", "model.hidden=8,16")
    assert spec.name == "smoke-model.layers-model.hidden"
    points = sweep.load_points(spec, [f"output_dir={tmp_path}", "train.max_steps=7"])
    assert [p.overrides for p in points] == [[f"model.layers={l}", f"model.hidden={h}"]
                                             for l in (1, 2, 3) for h in (8, 16)]
    assert [p.number for p in points] == list(range(1, 7))
    for p in points:
        layers, hidden = (int(ov.split("=")[1]) for ov in p.overrides)
        assert (p.cfg.model.layers, p.cfg.model.hidden, p.cfg.train.max_steps) == (layers, hidden, 7)
        assert Path(p.cfg.output_dir) == tmp_path / f"model.layers={layers},model.hidden={hidden}"
        assert p.cfg.tracking.sweep == spec.name and p.cfg.tracking.sweep_overrides == p.overrides
        assert p.cfg.tracking.run_name == p.label
    assert len({p.cfg.output_dir for p in points}) == 6


def test_a_bad_value_names_its_point():
    spec = _spec(None, "model.layers=1,2,0")
    with pytest.raises(ConfigError) as e:
        sweep.load_points(spec, [])
    assert str(e.value) == "point 3 of 3 (model.layers=0): 'model.layers' must be at least 1, got 0"
    with pytest.raises(ConfigError, match=r"point 2 of 2 \(model\.hidden=abc\): override: bad value for 'model.hidden'"):
        sweep.load_points(_spec(None, "model.hidden=8,abc"), [])
    with pytest.raises(ConfigError, match=r"point 1 of 2 \(model\.layer=1\): override: unknown config key "
                                          r"'model.layer' \(model 'row_lstm'\); did you mean 'model.layers'\?"):
        sweep.load_points(_spec(None, "model.layer=1,2"), [])


@pytest.mark.parametrize("flags, message", [
    (["slurm.nodes=1,2"], "'slurm.nodes' cannot be swept"),
    (["output_dir=a,b"], "'output_dir' cannot be swept"),
    (["tracking.experiment=a,b"], "'tracking.experiment' cannot be swept"),
    (["model.layers=1,2", "model.layers=3"], "--sweep names 'model.layers' twice"),
    (["model.layers"], "is not of the form dotted.key=v1,v2"),
    (["model.layers=1,,2"], "sweep value '' of 'model.layers' cannot name a run folder"),
    (["data.root=a/b,c"], "sweep value 'a/b' of 'data.root' cannot name a run folder"),
])
def test_sweeps_that_cannot_run_are_refused_in_one_line(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sweep.spec_from_args("smoke", flags, None, None)


def test_a_swept_key_cannot_also_be_fixed():
    with pytest.raises(ConfigError, match="'model.layers' is both swept and given as a fixed override"):
        sweep.load_points(_spec(None, "model.layers=1,2"), ["model.layers=3"])


def test_the_paper_sweeps_cover_the_published_ablations():
    """Every published point of configs/benchmarks.yaml (sweeps:) is a point of its saved sweep, and every
    point of the saved sweeps loads and validates (Tables 2 and 3: the 12-layer Row LSTM on CIFAR-10)."""
    published = yaml.safe_load((REPO / "configs" / "benchmarks.yaml").read_text())["sweeps"]
    expected = {"paper_depth": {1: 3.30, 2: 3.20, 3: 3.17, 6: 3.09, 9: 3.08, 12: 3.06},
                "paper_residual_skip": {(False, False): 3.22, (False, True): 3.09, (True, False): 3.07,
                                        (True, True): 3.06}}
    for name, values in expected.items():
        spec = sweep.load_sweep_file(name)
        points = sweep.load_points(spec, [])
        assert spec.experiment == "cifar10_row_lstm"
        labels = {p.label for p in points}
        table = {}
        for row in published[name]["results"]:
            label = sweep.point_label([f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                       for k, v in row["point"].items()])
            assert label in labels, (name, label, labels)
            key = tuple(row["point"].values())
            table[key[0] if len(key) == 1 else key] = row["val_bits_per_dim"]
        assert table == values and len(points) == len(values)
        for p in points:
            assert p.cfg.model.name == "row_lstm" and p.cfg.model.hidden == 128 and p.cfg.data.variant == "cifar10"
    depth = sweep.load_points(sweep.load_sweep_file("paper_depth"), [])
    assert [p.cfg.model.layers for p in depth] == [1, 2, 3, 6, 9, 12]
    both = sweep.load_points(sweep.load_sweep_file("paper_residual_skip"), [])
    assert [(p.cfg.model.residual, p.cfg.model.skip) for p in both] == [
        (False, False), (False, True), (True, False), (True, True)]


def test_a_sweep_file_with_a_wrong_shape_is_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("experiment: smoke\ngrid: {model.layers: 3}\n")
    with pytest.raises(ConfigError, match="grid 'model.layers' must be a non-empty list of values"):
        sweep.load_sweep_file(str(f))
    f.write_text("experiment: smoke\ngird: {model.layers: [1]}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['gird'\]"):
        sweep.load_sweep_file(str(f))
    with pytest.raises(ConfigError, match="differs from the sweep file's experiment 'cifar10_row_lstm'"):
        sweep.spec_from_args("smoke", [], "paper_depth", None)


def _submit(*args):
    return subprocess.run([sys.executable, "slurm/submit.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_dry_run_of_a_sweep_lists_the_points_and_prints_one_array_script(tmp_path, slurm_cluster):
    """Each element keeps the experiment's nodes x tasks; --max-parallel is the array's %K; nothing written."""
    out = _submit("--exp", "smoke", "--sweep", "model.layers=1,2,3", "--max-parallel", "2", "--nodes", "2",
                  "slurm.tasks_per_node=1", f"output_dir={tmp_path / 'sw'}", f"data.root={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for n in (1, 2, 3):
        assert any(l.split()[:3] == ["point", f"{n}:", f"model.layers={n}"] and
                   l.endswith(str(tmp_path / "sw" / f"model.layers={n}")) for l in lines), out.stdout
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=smoke-model.layers"):
        assert line in lines, (line, out.stdout)
    assert sum(l.startswith("srun ") for l in lines) == 1
    assert not (tmp_path / "sw").exists()


def test_bad_sweep_on_the_command_line_exits_2_naming_the_point(tmp_path):
    out = _submit("--exp", "smoke", "--sweep", "model.layers=2,0", "--dry-run", f"output_dir={tmp_path / 'sw'}")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: point 2 of 2 (model.layers=0): 'model.layers' must be at least 1, got 0"
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow  # two 2-rank DeepSpeed jobs through submitit's local executor
def test_local_sweep_nests_points_under_a_parent_and_a_failed_point_does_not_stop_the_other(tmp_path, smoke_data):
    """`--local`: the points run one after another; optim.lr=1e30 makes point 2's losses non-finite (the
    trainer stops it, FAILED), point 1 finishes. In MLflow: one parent run (run_kind=sweep, the grid as a
    param), each point a child run (mlflow.parentRunId) with its value as param and tag. The sweep's table
    has one row per point with the child's own val_bits_per_dim. Submitted again, the complete point is
    listed as complete."""
    db = tmp_path / "mlflow.db"
    uri = mlflow_store(db)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("smoke", artifact_location=(tmp_path / "artifacts").as_uri())
    args = ["--exp", "smoke", "--sweep", "optim.lr=0.003,1e30", "--sweep-name", "lr", f"output_dir={tmp_path / 'sw'}",
            f"data.root={smoke_data}", "data.prepare=none", f"tracking.tracking_uri={uri}", "train.max_steps=10",
            "train.eval_every=5", "train.log_every=5", "train.sample_every_eval=0", "train.max_nonfinite_steps=2",
            "checkpoint.every=1000"]
    out = subprocess.run([sys.executable, "slurm/submit.py", *args, "--local"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "point 1 (optim.lr=0.003): validation" in out.stdout
    assert "point 2 (optim.lr=1e30): job" in out.stderr and "NonFiniteLossError" in out.stderr

    exp = client.get_experiment_by_name("smoke")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"lr", "optim.lr=0.003", "optim.lr=1e30"}
    parent = runs["lr"]
    assert parent.data.tags["run_kind"] == "sweep" and parent.data.tags["sweep"] == "lr"
    assert parent.data.params == {"optim.lr": "0.003,1e30"} and parent.info.status == "FAILED"
    assert (tmp_path / "sw" / "mlflow_run_id").read_text() == parent.info.run_id
    for label, value, status in (("optim.lr=0.003", "0.003", "FINISHED"), ("optim.lr=1e30", "1e30", "FAILED")):
        child = runs[label]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweep"] == "lr" and child.data.tags["sweep.optim.lr"] == value
        assert float(child.data.params["optim.lr"]) == float(value)
        assert child.info.status == status
        assert (tmp_path / "sw" / label / "mlflow_run_id").read_text() == child.info.run_id
    final = json.loads((tmp_path / "sw" / "optim.lr=0.003" / "final_metrics.json").read_text())
    assert runs["optim.lr=0.003"].data.metrics["val_bits_per_dim"] == final["val_bits_per_dim"]

    table = sweep_report.collect_sweep(client, "lr", {})
    assert [(r.values, r.status, r.val, r.steps) for r in table.rows] == [
        (("0.003",), "FINISHED", final["val_bits_per_dim"], 10), (("1e30",), "FAILED", None, 0)]
    rep = tmp_path / "lr.md"
    code = report.main(["--sweep", "lr", "--tracking-uri", uri, "--out", str(rep)])
    assert code == 0
    assert f"| 0.003 | {final['val_bits_per_dim']:.4f} | 10 |" in rep.read_text()
    assert "| 1e30 | – | 0 | – | FAILED |" in rep.read_text()
    assert (tmp_path / "lr.png").stat().st_size > 5_000

    again = subprocess.run([sys.executable, "slurm/submit.py", *args, "--local", "--dry-run"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [l.endswith("(complete)") for l in again.stdout.splitlines() if l.lstrip().startswith("point ")] == \
        [True, False]


def test_sweep_table_sets_the_published_value_beside_each_point(tmp_path):
    """A paper_depth sweep logged with the MLflow client (no training): rows in grid order, the published
    Table 3 value and the gap for each point, `not started` for points without a run, and the plot."""
    uri = mlflow_store(tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("cifar10", artifact_location=(tmp_path / "artifacts").as_uri())
    spec = sweep.load_sweep_file("paper_depth")
    parent, created = tracker.start_sweep_run(uri, "cifar10", spec.name, spec.grid, tmp_path / "sw")
    assert created and tracker.start_sweep_run(uri, "cifar10", spec.name, spec.grid, tmp_path / "sw") == (parent, False)
    exp = client.get_experiment_by_name("cifar10").experiment_id
    for layers, val, steps in ((1, 3.5, 100), (6, 3.25, 200)):
        tags = {tracker.PARENT_TAG: parent, **tracker.sweep_tags(spec.name, [f"model.layers={layers}"])}
        run = client.create_run(exp, run_name=f"model.layers={layers}", tags=tags)
        client.log_metric(run.info.run_id, "val_bits_per_dim", val + 1, step=steps // 2)
        client.log_metric(run.info.run_id, "val_bits_per_dim", val, step=steps)
        client.set_terminated(run.info.run_id, "FINISHED")
    table = sweep_report.collect_sweep(client, "paper_depth", report.load_benchmarks())
    assert [(r.values, r.val, r.steps, r.status, r.published) for r in table.rows] == [
        (("1",), 3.5, 100, "FINISHED", 3.30), (("2",), None, 0, "not started", 3.20),
        (("3",), None, 0, "not started", 3.17), (("6",), 3.25, 200, "FINISHED", 3.09),
        (("9",), None, 0, "not started", 3.08), (("12",), None, 0, "not started", 3.06)]
    out = tmp_path / "depth.md"
    assert report.main(["--sweep", "paper_depth", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| model.layers | val bits/dim | steps | device-hours | status | published | gap |" in text
    assert "| 1 | 3.5000 | 100 | – | FINISHED | 3.30 | +0.200 |" in text
    assert "| 6 | 3.2500 | 200 | – | FINISHED | 3.09 | +0.160 |" in text
    assert "| 12 | – | 0 | – | not started | 3.06 | – |" in text
    assert (tmp_path / "depth.png").stat().st_size > 5_000
    assert report.main(["--sweep", "paper_dept", "--tracking-uri", uri, "--out", str(out)]) == 2
