"""submitit executors built from an experiment's `slurm:` section (SLURM, or the local executor).

Every resource comes from the config (and its `dotted.key=value` / command-line overrides); nothing
here builds a shell string: submitit writes the sbatch script and runs `sbatch` with an argument list.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from pipeline.config import ConfigError
from pipeline.train.distributed import MASTER_PORT_BASE, MASTER_PORT_SPAN, CudaFacts, cuda_facts, cuda_shortfall
from slurm.config import JobConfig

# The job's rendezvous, exported by the sbatch script itself (before srun starts the tasks, which inherit
# it), so that `--dry-run` shows exactly what every task uses: the first node of the allocation, and a port
# derived from the job id (the same on every node and across requeues; pipeline.train.distributed.master_port
# computes the same when a task is started without it). SLURM_JOB_ID is SLURM's, never user input.
RENDEZVOUS_SETUP = [
    'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
    f'export MASTER_PORT="$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % {MASTER_PORT_SPAN} ))"',
]


# sbatch exports the submitting shell's environment to the job (its default --export=ALL, and submitit runs
# sbatch with this process's environment): a DS_ACCELERATOR=cpu left there by a CPU run would make DeepSpeed
# put its buffers on the CPU in a GPU job. A GPU job's script removes it (the dry-run shows the line).
GPU_JOB_SETUP = ["unset DS_ACCELERATOR  # a GPU job: never the submitting shell's DeepSpeed accelerator"]


def job_setup(cfg: JobConfig) -> List[str]:
    """The lines the job's script runs before its tasks start: the rendezvous, and for a GPU job the
    removal of an inherited DS_ACCELERATOR."""
    return list(RENDEZVOUS_SETUP) + (list(GPU_JOB_SETUP) if cfg.slurm.gpus_per_node else [])


def srun_args(cfg: JobConfig) -> List[str]:
    """srun's options. `--cpus-per-task`: srun of SLURM 22.05-23.02 does not inherit it from sbatch, and
    without it each task is bound to one core (its threads, loader workers and launch thread on it)."""
    return ["--cpus-per-task", str(cfg.slurm.cpus_per_task)]


def check_local_resources(cfg: JobConfig, facts: Optional[CudaFacts] = None) -> None:
    """Refuse a local run (submitit's local executor: every task on this machine) of a GPU job that this
    machine cannot give one GPU per task, naming what it saw, before anything starts."""
    s = cfg.slurm
    if not s.gpus_per_node:
        return
    ranks, facts = s.ranks(), facts or cuda_facts()
    # Locally every task sees the same GPUs (submitit's CUDA_VISIBLE_DEVICES): as many as tasks are needed.
    problem = cuda_shortfall(facts, ranks) or (
        f"{facts.device_count} GPU(s) are visible for {ranks} tasks" if facts.device_count < ranks else None)
    if problem:
        raise ConfigError(f"a local run of 'slurm.gpus_per_node'={s.gpus_per_node} ({ranks} task(s), one GPU "
                          f"each) cannot run here: {problem}; submit it to SLURM, or set "
                          "slurm.gpus_per_node=0 for a CPU run")


def slurm_available() -> bool:
    """A controller answers. (submitit's AutoExecutor picks SLURM whenever srun exists, even with it down.)"""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def slurm_parameters(cfg: JobConfig, *, nodes: int, tasks: int, gpus_per_node: int,
                     name: Optional[str] = None) -> Dict[str, Any]:
    """submitit's `update_parameters` for SLURM: the config's resources, for `nodes` x `tasks`."""
    s = cfg.slurm
    params: Dict[str, Any] = dict(name=name or cfg.name, nodes=nodes, tasks_per_node=tasks,
                                  cpus_per_task=s.cpus_per_task, timeout_min=s.timeout_min,
                                  slurm_signal_delay_s=s.signal_delay_s,
                                  slurm_additional_parameters=dict(s.additional))
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    return params


def make_executor(cfg: JobConfig, local: bool, folder: Path):
    """The training job's executor: nodes x (one task per GPU; slurm/config.py has refused any other layout)."""
    s = cfg.slurm
    tasks = s.ranks_per_node()
    if local:
        ex = submitit.LocalExecutor(folder=folder)
        gpus = s.gpus_per_node * s.nodes
        ex.update_parameters(nodes=1, tasks_per_node=tasks * s.nodes, timeout_min=s.timeout_min,
                             gpus_per_node=gpus, **(dict(setup=list(GPU_JOB_SETUP)) if gpus else {}))
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_num_timeout)
    ex.update_parameters(**slurm_parameters(cfg, nodes=s.nodes, tasks=tasks, gpus_per_node=s.gpus_per_node),
                         slurm_setup=job_setup(cfg), slurm_srun_args=srun_args(cfg))
    return ex


def make_single_task_executor(cfg: JobConfig, local: bool, folder: Path, name: str, **extra: Any):
    """One task, no GPU (preprocessing): the config's CPUs, memory, time, partition, account, ..."""
    if local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(nodes=1, tasks_per_node=1, timeout_min=cfg.slurm.timeout_min)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.slurm.max_num_timeout)
    params = slurm_parameters(cfg, nodes=1, tasks=1, gpus_per_node=0, name=name)
    params["slurm_additional_parameters"].update(extra.pop("additional", {}))
    params.update(extra)
    ex.update_parameters(**params)
    return ex


def sbatch_script(executor, array_size: Optional[int] = None) -> str:
    """The script submitit would hand to sbatch (for --dry-run); `array_size` for a job array."""
    inner = executor._executor
    params = dict(inner.parameters)
    if array_size:
        params["map_count"] = array_size
    return _make_sbatch_string(command="<python -u -m submitit.core._submit FOLDER>", folder=inner.folder,
                               **params)
