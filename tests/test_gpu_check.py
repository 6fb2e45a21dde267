"""bench/gpu_check.py, the script a GPU session runs once: it must work the first time.

`--cpu-smoke` runs every section's code on CPU at toy sizes (fp16, CUDA graphs and the whole-layer
compile are skipped there, saying so); without a GPU and without the flag it stops at once, saying why."""
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.mark.slow  # ~30 s: every section's code on CPU
def test_cpu_smoke_fills_every_section_without_errors(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--budget-s", "600"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["mode"].startswith("cpu-smoke") and data["finished"]
    assert data["environment"]["device"] == "cpu" and data["matmul"]["bf16_tflops"] > 0
    tc = data["training_collectives"]
    assert tc["ok"] and tc["agree_nonfinite"] == [True, 0.0, True] and tc["eval_samples"] == 40
    tp = data["throughput"]
    for key in ("diagonal_bilstm_12x128_64", "diagonal_bilstm_12x128_32", "row_lstm_12x384_32",
                "row_lstm_4x512_nores_64"):
        assert data[f"flops_{key}"]["flops_per_image_fwd_bwd"] > 0
        assert tp[f"{key}_bf16"]["images_per_s"] > 0 and tp[f"{key}_bf16"]["compile"] == "none"
        assert tp[f"{key}_bf16_cell"]["images_per_s"] > 0 and tp[f"{key}_bf16_cell"]["compile"] == "cell"
        assert tp[f"{key}_fp16"] == {"skipped": "fp16 training needs a GPU"}
    assert tp["pixelcnn_12x128_64_bf16"]["achieved_tflops"] > 0 and "pixelcnn_12x128_64_bf16_cell" not in tp
    assert data["loader_64"]["images_per_s"] > 0 and data["loader_64"]["num_workers"] == 4
    # micro-batch 4: its throughput beside micro-batch 32's, the operator calls of one step, a checkpoint
    assert tp["diagonal_bilstm_12x128_64_mb4_bf16"]["micro_batch"] == 4
    assert data["targets"]["mb4_vs_mb32_images_per_s_64"] > 0
    ops = data["operator_calls_diagonal_bilstm_64_mb4"]
    assert ops["micro_batch"] == 4 and 0 < ops["top_level_aten_calls_per_step"] <= ops["all_aten_calls_per_step"]
    assert sum(ops["most_called"].values()) <= ops["top_level_aten_calls_per_step"]
    ck = data["checkpoint_round_trip"]
    assert ck["weights_equal"] is True and ck["device"] == ["cpu"] and ck["checkpoint_mib"] > 0
    t = data["targets"]
    assert set(t) >= {"diag64_vs_pixelcnn64_flops_eager", "diag64_vs_pixelcnn64_flops_cell",
                      "loader_vs_training_64", "cell_vs_eager_images_per_s", "train_compile_default"}
    assert t["train_compile_default"] in ("none", "cell")
    assert data["stability_bf16"]["steps_done"] == 6 and data["stability_bf16"]["nonfinite_losses"] == 0
    assert data["stability_fp16"] == {"skipped": "fp16 training needs a GPU"}
    assert data["layer_compile_diagonal_bilstm_32"]["skipped"]
    assert data["cuda_graph_diagonal_bilstm_64"] == {"skipped": "CUDA graphs need a GPU"}


def test_without_a_gpu_it_stops_at_once_saying_so(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine with one
    res = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "no CUDA GPU visible" in res.stderr and "Nothing was measured" in res.stderr
    assert not (tmp_path / "gpu_check.json").exists()
