"""The DeepSpeed engine on 2 CPU ranks: it learns, resumes bit for bit after SIGKILL or a stop signal,
tracks one MLflow run across the resume, and its checkpoints export to a DeepSpeed-free model."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers import REPO, hex_losses, metrics, train_2ranks

from pipeline.data.shards import split_batches
from pipeline.train.weights import consolidated_state

pytestmark = pytest.mark.slow  # 2-rank DeepSpeed launches

Z2 = ["train.max_steps=30", "train.eval_every=15", "checkpoint.every=10", "train.log_every=5",
      "train.sample_every_eval=4", "train.precision=bf16", "train.zero_stage=2", "optim.name=rmsprop"]
Z3 = ["train.max_steps=20", "train.eval_every=100", "checkpoint.every=5", "train.log_every=5",
      "train.sample_every_eval=4", "train.precision=fp32", "train.zero_stage=3", "optim.name=adam",
      "train.zero3_persistence_threshold=0", "tracking.codec_baselines=true", "data.test_splits=[train]"]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.fixture(scope="module")
def zero2(smoke_data, tmp_path_factory):
    """Run A uninterrupted; run B SIGKILLed after step 17 (last checkpoint: 10), then resumed."""
    base = tmp_path_factory.mktemp("zero2")
    _ok(train_2ranks(base / "a", smoke_data, Z2))
    killed = train_2ranks(base / "b", smoke_data, Z2, kill_after_step=17)
    assert killed.returncode != 0
    steps_at_kill = len(metrics(base / "b"))
    _ok(train_2ranks(base / "b", smoke_data, Z2))
    return base, steps_at_kill


@pytest.fixture(scope="module")
def zero3(smoke_data, tmp_path_factory):
    """Run C uninterrupted; run D asked to stop by SIGUSR2 (as SLURM does before a time-out), resumed."""
    base = tmp_path_factory.mktemp("zero3")
    _ok(train_2ranks(base / "c", smoke_data, Z3))
    stopped = train_2ranks(base / "d", smoke_data, Z3 + ["checkpoint.every=1000"], kill_after_step=8,
                           sig=signal.SIGUSR2)
    assert "stopped by signal at step" in stopped.stdout
    stop_step = int(Path(base / "d" / "checkpoints" / "latest").read_text()[4:])
    _ok(train_2ranks(base / "d", smoke_data, Z3 + ["checkpoint.every=1000"]))
    return base, stop_step


def test_exact_resume_after_sigkill_zero2_bf16(zero2):
    base, steps_at_kill = zero2
    assert 17 <= steps_at_kill < 30, "the kill must land between checkpoints, before the end"
    a, b = hex_losses(base / "a"), hex_losses(base / "b")
    assert len(a) == 30 and a == b
    fa = json.loads((base / "a" / "final_metrics.json").read_text())
    fb = json.loads((base / "b" / "final_metrics.json").read_text())
    assert fa["val_bits_per_dim"] == fb["val_bits_per_dim"]
    _, wa = consolidated_state(base / "a" / "checkpoints")
    _, wb = consolidated_state(base / "b" / "checkpoints")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_exact_resume_after_stop_signal_zero3_fp32(zero3):
    base, stop_step = zero3
    assert 8 <= stop_step < 20
    assert hex_losses(base / "c") == hex_losses(base / "d")
    assert len(hex_losses(base / "c")) == 20


def test_each_rank_wrote_its_optimizer_shard_and_old_checkpoints_are_pruned(zero2):
    base, _ = zero2
    ckpts = base / "a" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step00000030"
    latest = ckpts / "step00000030"
    for rank in (0, 1):
        assert (latest / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").exists()
        assert (latest / f"rng_rank{rank}.pt").exists()
    assert json.loads((latest / "meta.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step00000020", "step00000030"]  # keep_last=2


def _runs(db):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("smoke")
    return client, client.search_runs([exp.experiment_id])


def test_training_lowers_validation_bits_per_dim(zero2):
    base, _ = zero2
    client, (run,) = _runs(base / "a.db")
    history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_bits_per_dim"),
                                       key=lambda m: m.step)]
    assert len(history) == 2 and history[1] < history[0] < 8.0
    # ... with bf16 gradients reduced and accumulated in fp32, as the saved DeepSpeed JSON says
    ds = json.loads((base / "a" / "deepspeed.json").read_text())
    assert ds["bf16"]["enabled"] and ds["communication_data_type"] == "fp32"
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"} and ds["zero_optimization"]["stage"] == 2


def test_codec_baselines_are_logged_to_the_same_run(zero3, smoke_data):
    """tracking.codec_baselines: PNG, WebP and JPEG XL lossless bits/dim of the validation split, in the run's summary
    (every rank's) and its MLflow metrics, equal to measuring the split directly."""
    from pipeline.tracking.baselines import split_codec_bits_per_dim
    base, _ = zero3
    final = json.loads((base / "c" / "final_metrics.json").read_text())
    direct = split_codec_bits_per_dim(smoke_data, 8, "val")
    assert direct["images"] == 64 and 0 < direct["webp"] < 16 and 0 < direct["png"] < 16
    assert final["png_bits_per_dim"] == direct["png"] and final["webp_bits_per_dim"] == direct["webp"]
    assert final["jpegxl_bits_per_dim"] == direct["jpegxl"] and 0 < direct["jpegxl"] < 16
    # data.test_splits=[train]: that whole split too, codecs and model, under its prefix
    train = split_codec_bits_per_dim(smoke_data, 8, "train")
    assert {c: final[f"train_{c}_bits_per_dim"] for c in ("png", "webp", "jpegxl")} == {
        c: train[c] for c in ("png", "webp", "jpegxl")}
    assert 0 < final["train_bits_per_dim"] < 9 and final["train_nats_per_image"] > 0
    client, (run,) = _runs(base / "c.db")
    assert run.data.metrics["png_bits_per_dim"] == direct["png"]
    assert run.data.metrics["webp_bits_per_dim"] == direct["webp"]


def test_mlflow_run_holds_params_metrics_artifacts_and_tags(zero2, smoke_data):
    base, _ = zero2
    client, (run,) = _runs(base / "a.db")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "row_lstm" and run.data.params["train.zero_stage"] == "2"
    assert run.data.params["layers"] == "2"
    for key in ("train_bits_per_dim", "val_bits_per_dim", "lr", "images_per_s", "step_time_s", "memory_mb"):
        assert key in run.data.metrics, key
    manifest = json.loads((smoke_data / "8" / "train.json").read_text())
    tags = run.data.tags
    assert tags["model"] == "row_lstm" and tags["world_size"] == "2" and len(tags["manifest_sha256"]) == 64
    assert tags["dataset_variant"] == "synthetic" and tags["image_size"] == "8"
    assert tags["resize"] == manifest["params"]["resize"] == "box"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "samples", "final_metrics.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {
        "config/experiment.yaml", "config/deepspeed.json"}
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 2  # one grid per evaluation


def test_resumed_run_continues_the_same_mlflow_run(zero2):
    base, _ = zero2
    client, runs = _runs(base / "b.db")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert (base / "b" / "mlflow_run_id").read_text() == run.info.run_id
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train_bits_per_dim")}
    assert {5, 10, 15, 20, 25, 30} <= steps


def test_export_and_evaluate_cli_reproduce_the_final_bits_per_dim(zero3, smoke_data, tmp_path):
    base, _ = zero3
    out = tmp_path / "model.pt"
    subprocess.run([sys.executable, "-m", "pipeline.tools.export", str(base / "c" / "checkpoints"), str(out)],
                   cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
    res = subprocess.run([sys.executable, "-m", "pipeline.tools.evaluate", "--checkpoint", str(out), "--data",
                          str(smoke_data), "--batch-size", "8", "--baselines"],
                         cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
    evaluated = json.loads(res.stdout.strip().splitlines()[-1])["val"]
    final = json.loads((base / "c" / "final_metrics.json").read_text())
    # the run's data.test_splits=[train] figure is the same model on the whole train split
    res = subprocess.run([sys.executable, "-m", "pipeline.tools.evaluate", "--checkpoint", str(out), "--data",
                          str(smoke_data), "--batch-size", "8", "--split", "train"],
                         cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
    on_train = json.loads(res.stdout.strip().splitlines()[-1])["train"]
    assert on_train["bits_per_dim"] == pytest.approx(final["train_bits_per_dim"], abs=1e-5)
    assert evaluated["samples"] == 64
    # --baselines: the codecs on the same images, as the run's end-of-run baselines measured them
    for codec in ("png", "webp", "jpegxl"):
        assert evaluated[f"{codec}_bits_per_dim"] == final[f"{codec}_bits_per_dim"]
    assert evaluated["bits_per_dim"] == pytest.approx(final["val_bits_per_dim"], abs=1e-5)
    blob = torch.load(out, weights_only=True)  # plain tensors and containers only
    assert blob["config"]["name"] == "row_lstm"
    # pipeline.compression takes either form: encoded with the checkpoint folder, decoded with model.pt
    # (the same float32 weights, so the same weights hash), pixels exact
    from PIL import Image

    from pipeline.compression.__main__ import main as compress
    x = next(split_batches(smoke_data, 8, "val", 4))
    paths = []
    for k, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        paths.append(str(tmp_path / f"v{k}.png"))
        Image.fromarray(img).save(paths[-1])
    prc_file = tmp_path / "v.prc"
    assert compress(["encode", "--checkpoint", str(base / "c" / "checkpoints"), "--out", str(prc_file),
                     "--no-progress", *paths]) == 0
    assert compress(["decode", str(prc_file), "--checkpoint", str(out), "--out-dir", str(tmp_path / "d"),
                     "--no-progress"]) == 0
    for k in range(4):
        assert (np.asarray(Image.open(tmp_path / "d" / f"v{k}.png")) == x[k].permute(1, 2, 0).numpy()).all()


def test_crash_between_shard_writes_and_latest_resumes_from_previous(zero2, smoke_data, tmp_path):
    """The on-disk state of a kill during a checkpoint: DeepSpeed's files for step 30 written, meta.json
    not yet, `latest` still naming step 20. The resume ignores the partial checkpoint, replaces it, and
    ends bit for bit where the uninterrupted run did."""
    import shutil
    base, _ = zero2
    run = tmp_path / "crashed"
    shutil.copytree(base / "a", run)
    (run / "checkpoints" / "step00000030" / "meta.json").unlink()
    (run / "checkpoints" / "latest").write_text("step00000020")
    (run / "mlflow_run_id").unlink()  # the copy gets its own MLflow run in its own store
    _ok(train_2ranks(run, smoke_data, Z2))
    assert hex_losses(run) == hex_losses(base / "a")
    assert (run / "checkpoints" / "step00000030" / "meta.json").exists()


def test_sample_cli_writes_a_grid_and_a_completion(zero3, smoke_data, tmp_path):
    from PIL import Image
    base, _ = zero3
    for extra, name in (([], "grid.png"), (["--complete-from", str(smoke_data)], "completion.png")):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "pipeline.tools.sample", "--checkpoint", str(base / "c" / "checkpoints"),
                        "--n", "4", "--out", str(out), *extra], cwd=REPO, check=True, capture_output=True,
                       timeout=300)
        img = Image.open(out)
        assert img.mode == "RGB" and img.width > 4 * 8  # enlarged for viewing, with padding


def test_non_finite_losses_stop_the_run_with_a_checkpoint(smoke_data, tmp_path):
    """A learning rate of 1e30 blows the weights up after one step: every later micro-batch is non-finite,
    is skipped and counted; after train.max_nonfinite_steps in a row the run stops, saying why."""
    run = tmp_path / "nonfinite"
    out = train_2ranks(run, smoke_data, ["train.precision=fp32", "optim.lr=1e30", "optim.warmup_steps=0",
                                         "train.max_nonfinite_steps=3", "train.eval_every=100"], nproc=1)
    assert out.returncode != 0
    assert "3 consecutive non-finite losses at step 1" in out.stdout
    assert (run / "checkpoints" / "latest").read_text() == "step00000001"
    meta = json.loads((run / "checkpoints" / "step00000001" / "meta.json").read_text())
    assert meta["step"] == 1


def test_multiscale_at_zero3_samples_during_training_and_finishes(smoke_data, tmp_path):
    """The multi-scale model under ZeRO-3 with a sample grid at a mid-run evaluation: sampling on rank 0
    alone used to leave DeepSpeed's ZeRO-3 parameter trace out of step (the upsampler ran on one rank), and
    the next training step hung in a collective only rank 0 entered."""
    run = tmp_path / "ms"
    proc = train_2ranks(run, smoke_data, ["model.name=multiscale", "model.layers=1", "model.base=row_lstm",
                                          "train.zero_stage=3", "train.precision=fp32", "train.max_steps=4",
                                          "train.eval_every=2", "train.sample_every_eval=2", "checkpoint.every=2",
                                          "train.zero3_persistence_threshold=0"], timeout=240)
    _ok(proc)
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    assert (run / "samples" / "step00000002.png").exists() and (run / "samples" / "step00000004.png").exists()


def test_run_figures_draw_the_curve_with_every_logged_baseline_and_a_sample_grid(zero3, smoke_data, tmp_path):
    """pipeline.tools.run_figures: the curve's series are the run's own (every training step, the validation
    history from MLflow, the PNG / WebP / JPEG XL values of final_metrics.json), and both PNGs are written."""
    from PIL import Image

    from pipeline.run_dir import RunDir
    from pipeline.tools.run_figures import curve_series, main
    base, _ = zero3
    run = RunDir(base / "c")
    final = json.loads(run.final_metrics.read_text())
    c = curve_series(run)
    assert c["steps"] == [m["step"] for m in metrics(base / "c")] and len(c["smooth"]) == len(c["train"])
    assert c["val"][-1] == (final["steps"], final["val_bits_per_dim"])
    assert {k: v for k, (v, _) in c["baselines"].items()} == {
        "PNG": final["png_bits_per_dim"], "WebP lossless": final["webp_bits_per_dim"],
        "JPEG XL lossless": final["jpegxl_bits_per_dim"]}
    assert c["dims"] == 3 * 8 * 8 and c["split"] == "val"
    assert main(["--run", str(run.root), "--out-dir", str(tmp_path), "--prefix", "c", "--data", str(smoke_data)]) == 0
    assert Image.open(tmp_path / "c_curve.png").size == (700, 420)
    assert Image.open(tmp_path / "c_samples.png").width > 8 * 8
