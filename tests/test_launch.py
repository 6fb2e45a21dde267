"""slurm/executors.py and slurm/launcher.py: what a job's script runs before and around its tasks (read from
the script submitit would hand to sbatch, the one `--dry-run` prints), and how many threads each rank gets."""
from __future__ import annotations

import os
import subprocess

import pytest

from pipeline.config import ConfigError
from pipeline.train.distributed import CudaFacts
from slurm import submit
from slurm.config import load_job_config
from slurm.executors import GPU_JOB_SETUP, check_local_resources, make_executor, sbatch_script
from slurm.launcher import rank_threads

GPU_JOB = ("imagenet64_multiscale", ["slurm.nodes=8", "slurm.gpus_per_node=8"])


def script(tmp_path, exp, overrides):
    return sbatch_script(make_executor(load_job_config(exp, overrides), False, tmp_path)).splitlines()


def srun_line(lines):
    (line,) = [line for line in lines if line.startswith("srun ")]
    return line


@pytest.mark.parametrize("exp, overrides, cpus", [(*GPU_JOB, 8), ("smoke", [], 1),
                                                  ("smoke", ["slurm.cpus_per_task=3"], 3)])
def test_srun_gets_the_jobs_cpus_per_task(tmp_path, exp, overrides, cpus):
    """srun of SLURM 22.05-23.02 does not inherit --cpus-per-task from sbatch: the script passes it."""
    lines = script(tmp_path, exp, overrides)
    assert f"#SBATCH --cpus-per-task={cpus}" in lines
    assert f" --cpus-per-task {cpus} " in srun_line(lines)


def test_a_gpu_job_removes_an_inherited_ds_accelerator_before_its_tasks_start(tmp_path):
    lines = script(tmp_path, *GPU_JOB)
    (unset,) = [i for i, line in enumerate(lines) if line.startswith("unset DS_ACCELERATOR")]
    assert unset < lines.index(srun_line(lines))
    assert not any("DS_ACCELERATOR" in line for line in script(tmp_path, "smoke", []))  # a CPU job keeps it
    # and the line does what it says, in the shell sbatch runs the script with
    shown = subprocess.run(["bash", "-c", "\n".join(GPU_JOB_SETUP + ['echo "${DS_ACCELERATOR-unset}"'])],
                           env=dict(os.environ, DS_ACCELERATOR="cpu"), capture_output=True, text=True)
    assert shown.stdout == "unset\n", shown.stderr


def test_a_local_gpu_job_removes_it_too(tmp_path):
    cfg = load_job_config("smoke", ["train.device=auto", "slurm.gpus_per_node=2", "slurm.tasks_per_node=0"])
    assert make_executor(cfg, True, tmp_path).parameters["setup"] == GPU_JOB_SETUP
    assert "setup" not in make_executor(load_job_config("smoke"), True, tmp_path).parameters


def _local_gpu_job(gpus_per_node=1, nodes=1):
    return load_job_config("smoke", ["train.device=auto", f"slurm.gpus_per_node={gpus_per_node}",
                                     "slurm.tasks_per_node=0", f"slurm.nodes={nodes}"])


@pytest.mark.parametrize("facts, nodes, seen", [
    (CudaFacts("2.13.0+cpu", None, None, 0), 1, "this torch is a CPU-only build (torch 2.13.0+cpu"),
    (CudaFacts("2.13.0+cu126", "12.6", "", 0), 1, "CUDA_VISIBLE_DEVICES is set but empty"),
    (CudaFacts("2.13.0+cu126", "12.6", None, 1), 2, "1 GPU(s) are visible for 2 tasks"),  # --local: one machine
])
def test_a_local_gpu_job_this_machine_cannot_run_is_refused(facts, nodes, seen):
    with pytest.raises(ConfigError, match="^a local run of 'slurm.gpus_per_node'=1 .*cannot run here: ") as err:
        check_local_resources(_local_gpu_job(nodes=nodes), facts)
    assert seen in str(err.value)


def test_a_local_gpu_job_with_its_gpus_and_a_cpu_job_pass():
    check_local_resources(_local_gpu_job(nodes=2), CudaFacts("2.13.0+cu126", "12.6", None, 2))
    check_local_resources(load_job_config("smoke"), CudaFacts("2.13.0+cpu", None, None, 0))


def test_submit_refuses_a_local_gpu_job_in_one_line_before_submitting(monkeypatch, capsys):
    """The issue's `--local slurm.gpus_per_node=1 slurm.tasks_per_node=1` trained on the CPU to the end."""
    def must_not_submit(*args, **kwargs):
        raise AssertionError("submitted")
    monkeypatch.setattr(submit, "slurm_available", lambda: False)
    monkeypatch.setattr(submit, "submit_training", must_not_submit)
    monkeypatch.setattr(submit, "prepare_data", must_not_submit)
    monkeypatch.setattr("slurm.executors.cuda_facts", lambda: CudaFacts("2.13.0+cpu", None, None, 0))
    for extra in (["slurm.tasks_per_node=1"], ["slurm.tasks_per_node=1", "train.device=auto"]):
        rc = submit.main(["--exp", "smoke", "--local", "slurm.gpus_per_node=1", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: a local run of 'slurm.gpus_per_node'=1 (1 task(s), one GPU each) cannot run "
                          "here: this torch is a CPU-only build")


@pytest.mark.parametrize("cpus, workers, threads", [(8, 4, 4), (8, 0, 8), (16, 4, 12), (1, 2, 1), (4, 4, 1)])
def test_rank_threads_are_the_tasks_cpus_less_one_per_loader_worker(cpus, workers, threads):
    assert rank_threads(cpus, workers) == threads
