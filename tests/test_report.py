"""`python -m pipeline.tracking.report`: best runs per model beside the published bits/dim, grouped by the data
they ran on, with a plot, logged as a `report` run; plus what the training runs give the MLflow UI.

Two real single-process smoke runs (different model and precision) make one store (`smoke_store`, shared
with test_mlflow_ui.py); runs logged directly with the MLflow client test the ranking logic against the
published numbers of configs/benchmarks.yaml.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import mlflow
import pytest
import yaml
from helpers import REPO, SMOKE_RUNS, make_smoke_store

from pipeline.tracking import report

pytestmark = pytest.mark.slow  # real smoke trainings make its MLflow store


@pytest.fixture(scope="module")
def smoke_store(smoke_data, tmp_path_factory) -> Path:
    return make_smoke_store(tmp_path_factory.getbasetemp() / "report_smoke_store", smoke_data)


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


def _runs(db: Path, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=_uri(db))
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id])


def _run_report(args: List[str], capsys) -> (int, str):
    code = report.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


# ----------------------------------------------------------------------------- the training runs themselves

def test_training_runs_are_comparable_in_the_ui(smoke_store):
    """Same metric names at the same step axis, headline params top-level, comparability tags, names."""
    client, _, runs = _runs(smoke_store, "smoke")
    assert {r.info.run_name for r in runs} == set(SMOKE_RUNS)
    metric_sets = [set(r.data.metrics) for r in runs]
    assert metric_sets[0] == metric_sets[1]
    assert {"train_bits_per_dim", "val_bits_per_dim", "lr", "images_per_s", "step_time_s", "memory_mb",
            "device_hours", "nonfinite_steps"} <= metric_sets[0]
    for r in runs:
        p, t = r.data.params, r.data.tags
        for key in ("model", "layers", "hidden", "image_size", "precision", "zero_stage", "global_batch_size",
                    "optimizer", "base_lr"):
            assert key in p, key
        assert t["run_kind"] == "train" and t["benchmark"] == "smoke"
        for key in ("dataset_variant", "manifest_sha256", "resize", "image_size"):
            assert t[key], key
        assert t["data_key"] == f"synthetic/box/8px/{t['manifest_sha256'][:12]}"
        rid = r.info.run_id
        assert [m.step for m in client.get_metric_history(rid, "val_bits_per_dim")] == [5, 10]
        assert sorted(m.step for m in client.get_metric_history(rid, "device_hours")) == [5, 10]


# ---------------------------------------------------------------------------------- report on real runs

def test_report_on_smoke_runs_writes_table_plot_and_report_run(smoke_store, tmp_path, capsys):
    out = tmp_path / "rep" / "report.md"
    code, msg = _run_report(["--experiment", "smoke", "--tracking-uri", _uri(smoke_store), "--out", str(out)],
                            capsys)
    assert code == 0, msg
    text = out.read_text()
    client, exp, runs = _runs(smoke_store, "smoke")
    training = [r for r in runs if r.data.tags.get("run_kind") == "train"]
    for r in training:  # each run's row: name, its latest val and train bits/dim, its steps
        row = next(l for l in text.splitlines() if f"| {r.info.run_name} |" in l)
        assert f"| {r.data.metrics['val_bits_per_dim']:.4f} | {r.data.metrics['train_bits_per_dim']:.4f} | 10 |" in row
    best = min(training, key=lambda r: r.data.metrics["val_bits_per_dim"])
    assert f"| 1 | {best.data.params['model']} | {best.info.run_name} |" in text
    assert "No published results for benchmark `smoke`" in text
    assert "differently made data" not in text
    plot = out.with_name("report-smoke.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![validation bits/dim of smoke](report-smoke.png)" in text
    assert not list(out.parent.glob(".*tmp*")), "atomic writes leave no temp files"

    reports = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "report"]
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    assert reports[0].info.run_name.startswith("report-") and not reports[0].data.metrics
    assert {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")} == {
        "report/report.md", "report/report-smoke.png"}

    # A second report skips the first report run and still ranks the same two training runs.
    code, _ = _run_report(["--experiment", "smoke", "--tracking-uri", _uri(smoke_store), "--out", str(out)],
                          capsys)
    again = out.read_text()
    assert code == 0 and "2 training run(s) with a validation result (1 earlier report run(s) skipped)" in again
    assert "report-2" not in again.split("## Experiment")[1]


# ------------------------------------------------------------------------- ranking vs published numbers

def _log_run(client, exp_id: str, name: str, model: str, vals: List[float], variant: str, sha: str,
             size: int = 32, resize: str = "box") -> str:
    from mlflow.entities import Metric
    run = client.create_run(exp_id, run_name=name, tags={
        "run_kind": "train", "model": model, "dataset_variant": variant, "manifest_sha256": sha * 64,
        "resize": resize, "image_size": str(size)})
    rid = run.info.run_id
    metrics = []
    for i, v in enumerate(vals, 1):
        step = 1000 * i
        metrics += [Metric("val_bits_per_dim", v, 0, step), Metric("train_bits_per_dim", v - 0.05, 0, step),
                    Metric("images_per_s", 100.0 * i, 0, step), Metric("device_hours", 2.0 * i, 0, step)]
    client.log_batch(rid, metrics=metrics, params=[mlflow.entities.Param("model", model)])
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fake_store")
    db = base / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=_uri(db))
    art = (base / "artifacts").as_uri()
    cifar = client.create_experiment("cifar10", artifact_location=art + "/cifar10")
    _log_run(client, cifar, "row_lstm-12x128-32px-bf16-zero2", "row_lstm", [3.6, 3.2], "cifar10", "a")
    _log_run(client, cifar, "row_lstm-12x64-32px-bf16-zero2", "row_lstm", [3.7, 3.5], "cifar10", "a")
    _log_run(client, cifar, "diagonal_bilstm-12x128-32px-bf16-zero2", "diagonal_bilstm", [3.4, 3.1], "cifar10", "a")
    client.create_run(cifar, run_name="not-evaluated-yet", tags={"run_kind": "train"})
    im32 = client.create_experiment("imagenet32", artifact_location=art + "/imagenet32")
    _log_run(client, im32, "row_lstm-on-manifest-b", "row_lstm", [4.1, 3.95], "chrabaszcz-box", "b")
    _log_run(client, im32, "row_lstm-on-manifest-c", "row_lstm", [4.2, 3.90], "chrabaszcz-box", "c")
    _log_run(client, im32, "row_lstm-original-data", "row_lstm", [4.0, 3.88], "van-den-oord", "d", resize="unknown")
    client.create_experiment("imagenet64", artifact_location=art + "/imagenet64")
    return db


def test_benchmarks_file_holds_the_published_numbers_with_sources():
    data = yaml.safe_load((REPO / "configs" / "benchmarks.yaml").read_text())
    b, sources = data["benchmarks"], data["sources"]
    got = {(name, r["label"].split(" (")[0], r["source"]): r.get("test_bits_per_dim", r.get("test_nats_per_image"))
           for name, bench in b.items() for r in bench["results"]}
    assert got == {
        ("cifar10", "PixelCNN", "pixelrnn"): 3.14, ("cifar10", "Row LSTM", "pixelrnn"): 3.07,
        ("cifar10", "Diagonal BiLSTM", "pixelrnn"): 3.00, ("cifar10", "Gated PixelCNN", "gated_pixelcnn"): 3.03,
        ("cifar10", "PixelCNN++", "pixelcnn_pp"): 2.92, ("cifar10", "PixelSNAIL", "pixelsnail"): 2.85,
        ("cifar10", "Sparse Transformer", "sparse_transformer"): 2.80,
        ("imagenet32", "Row LSTM", "pixelrnn"): 3.86, ("imagenet32", "Gated PixelCNN", "gated_pixelcnn"): 3.83,
        ("imagenet32", "PixelSNAIL", "pixelsnail"): 3.80,
        ("imagenet64", "Row LSTM", "pixelrnn"): 3.63, ("imagenet64", "Gated PixelCNN", "gated_pixelcnn"): 3.57,
        ("imagenet64", "PixelSNAIL", "pixelsnail"): 3.52,
        ("imagenet64", "Sparse Transformer", "sparse_transformer"): 3.44,
        # the paper's Table 4, in nats per image (issue 22)
        ("binarized_mnist", "Diagonal BiLSTM", "pixelrnn"): 80.75, ("binarized_mnist", "DRAW", "pixelrnn"): 80.97,
        ("binarized_mnist", "EoNADE", "pixelrnn"): 85.10, ("binarized_mnist", "MADE", "pixelrnn"): 86.64}
    assert [r["test_nats_per_image"] for r in b["binarized_mnist"]["results"][:2]] == [79.20, 80.75]
    assert b["binarized_mnist"]["unit"] == "nats_per_image"
    assert "1601.06759" in sources["pixelrnn"]["url"]
    assert all(s in sources for bench in b.values() for s in (r["source"] for r in bench["results"]))
    for name in ("imagenet32", "imagenet64"):
        assert b[name]["dataset_variant"] != "chrabaszcz-box" and "chrabaszcz-box" in b[name]["note"]


def test_table_ranks_best_run_per_model_against_published(fake_store, tmp_path, capsys):
    out = tmp_path / "cifar.md"
    code, msg = _run_report(["--experiment", "cifar10", "--tracking-uri", _uri(fake_store), "--out", str(out),
                             "--no-log-run"], capsys)
    assert code == 0, msg
    text = out.read_text()
    assert "3 training run(s) with a validation result (1 run(s) without a validation result yet" in text
    assert "| 1 | diagonal_bilstm | diagonal_bilstm-12x128-32px-bf16-zero2 | 3.1000 | 3.0500 | 2000 | 150.0 | 4 " \
           "| FINISHED | 3.00 (pixelrnn) | +0.100 |" in text
    assert "| 2 | row_lstm | row_lstm-12x128-32px-bf16-zero2 | 3.2000 | 3.1500 | 2000 | 150.0 | 4 " \
           "| FINISHED | 3.07 (pixelrnn) | +0.130 |" in text
    assert "row_lstm-12x64" not in text  # not the best of its model
    # every published CIFAR-10 result, with the gap of each best run (diagonal first)
    assert "| PixelCNN | 3.14 | pixelrnn | -0.040 | +0.060 |" in text
    assert "| PixelCNN++ | 2.92 | pixelcnn_pp | +0.180 | +0.280 |" in text
    assert "| Sparse Transformer | 2.80 | sparse_transformer | +0.300 | +0.400 |" in text
    assert "†" not in text and "differently made data" not in text
    assert "arxiv.org/abs/1601.06759" in text
    assert out.with_name("cifar-cifar10.png").exists()


def test_runs_on_different_data_are_not_ranked_together(fake_store, tmp_path, capsys):
    out = tmp_path / "im32.md"
    code, msg = _run_report(["--experiment", "imagenet32", "--tracking-uri", _uri(fake_store), "--out", str(out),
                             "--no-log-run"], capsys)
    assert code == 0, msg
    text = out.read_text()
    assert "Warning: runs on differently made data" in text and "3 data groups" in text
    groups = text.split("### Data group ")[1:]
    assert len(groups) == 3
    by_name = {g.split("|")[0]: g for g in groups}
    # each group ranks only its own run, as number 1
    for g in groups:
        assert g.count("| 1 | row_lstm |") == 1 and "| 2 |" not in g
    chrab = [g for g in groups if "variant `chrabaszcz-box`" in g]
    orig = [g for g in groups if "variant `van-den-oord`" in g]
    assert len(chrab) == 2 and len(orig) == 1, list(by_name)
    assert {("manifest `bbbbbbbbbbbb`" in g) for g in chrab} == {True, False}
    for g in chrab:  # against the published (original-downsampling) numbers: flagged
        assert "not strictly comparable" in g and "+0.0" in g and " †" in g
    assert "| 3.86 (pixelrnn) | +0.020 |" in orig[0] and "†" not in orig[0]


def test_binarized_mnist_is_compared_in_nats_per_image(tmp_path, capsys):
    """Its benchmark's unit is nats/image: the table and the gaps use the runs' val_nats_per_image."""
    import math

    from mlflow.entities import Metric
    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=_uri(db))
    exp = client.create_experiment("binarized_mnist", artifact_location=(tmp_path / "art").as_uri())
    rid = _log_run(client, exp, "diagonal_bilstm-7x16-28px", "diagonal_bilstm", [0.16, 0.15],
                   "binarized-mnist-larochelle-murray", "e", size=28)
    client.log_batch(rid, metrics=[Metric("val_nats_per_image", v * 784 * math.log(2), 0, 1000 * i)
                                   for i, v in enumerate([0.16, 0.15], 1)])
    out = tmp_path / "mnist.md"
    code, msg = _run_report(["--experiment", "binarized_mnist", "--tracking-uri", _uri(db), "--out", str(out),
                             "--no-log-run"], capsys)
    assert code == 0, msg
    text = out.read_text()
    nats = 0.15 * 784 * math.log(2)  # 81.51
    assert f"| 1 | diagonal_bilstm | diagonal_bilstm-7x16-28px | {nats:.4f} | 0.1000 | 2000 |" in text
    assert f"79.20 (pixelrnn); 80.75 (pixelrnn) | {nats - 79.20:+.3f}; {nats - 80.75:+.3f} |" in text
    assert f"| MADE (Table 4) | 86.64 | pixelrnn | {nats - 86.64:+.3f} |" in text
    assert "val nats/image" in text and "test nats/image" in text and "†" not in text


def test_no_runs_says_so_and_writes_nothing(fake_store, tmp_path, capsys):
    out = tmp_path / "none.md"
    code, msg = _run_report(["--experiment", "imagenet64", "--tracking-uri", _uri(fake_store), "--out", str(out)],
                            capsys)
    assert code == 0 and "nothing to report" in msg and "imagenet64" in msg
    assert not out.exists() and not list(tmp_path.iterdir())
    code, msg = _run_report(["--experiment", "imagenet33", "--tracking-uri", _uri(fake_store), "--out", str(out)],
                            capsys)
    assert code == 2 and "no experiment 'imagenet33'" in msg and "imagenet32" in msg


def test_cli_without_a_store(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipeline.tracking.report", "--tracking-uri",
                          f"sqlite:///{tmp_path / 'absent.db'}", "--out", str(tmp_path / "r.md")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "No MLflow store" in res.stdout and "no runs" in res.stdout
    assert not (tmp_path / "absent.db").exists() and not (tmp_path / "r.md").exists()


def test_device_hours_interpolated_at_evaluation_steps():
    r = report.RunSummary("id", "n", "FINISHED", "row_lstm", {}, {}, 3.0, None, 20, None, None,
                          val_history=[(10, 3.5), (15, 3.2), (20, 3.0)], hours_history=[(10, 1.0), (20, 2.0)])
    assert r.val_device_hours() == [1.0, 1.5, 2.0]
    assert r.data_key == ("unknown",) * 4
