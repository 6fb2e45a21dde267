"""The callable every SLURM (or local submitit) task runs: distributed environment, then `train(cfg)`.

Time-out and preemption (dino's pattern, adapted to DeepSpeed): submitit's USR2 handler would make
rank 0 alone call `checkpoint()` and exit at once, but a DeepSpeed checkpoint must be written by every
rank together. So the handler here only raises a flag; the training loop sees it at the next step
boundary on all ranks (the flag is all-reduced, so a rank the signal missed stops too), every rank
writes the checkpoint, and only then does rank 0 hand over to submitit's handler, which calls
`checkpoint()` (a resubmission of this same callable: the requeued job resumes from `latest` and
reopens the same MLflow run) and requeues the job, within submitit's limit on time-out requeues
(`slurm.max_num_timeout`; past it the job ends with a clear log line and SLURM state TIMEOUT).

What SLURM does, measured on the local cluster (slurm 22.05, `--signal=USR2@N` without `B:`):
  * USR2 goes to every task of the job step (both ranks got it within 0.1 ms), not to the batch shell.
  * slurmctld checks time limits every 30 s, and sends the signal at the first check where less than
    N + 30 s are left: so USR2 comes between N and N + 30 s before the limit (with `--time 1` and
    N >= 30 it comes at once), and the kill at the first check past the limit.
  * SIGTERM (scancel, `scontrol requeue`, KillWait=5 s before SIGKILL) also sets the flag, but SLURM
    sends it to the loader workers too, so a rank usually fails at its next batch instead: the job then
    resumes from its last periodic checkpoint (checkpoint.every), and never requeues itself for it.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Any, Dict, Optional

import submitit

from slurm.config import JobConfig

log = logging.getLogger("slurm.launcher")

# A USR2 that arrives while the job is still starting (unpickling this module, importing torch) would
# otherwise kill the process (default action) and fail the job. Inside a job (submitit sets
# SUBMITIT_FOLDER before it unpickles us) remember it instead; `Trainer` turns it into a stop request.
_EARLY_SIGNAL: Dict[str, Optional[int]] = {"signum": None}


def _remember_early_signal(signum: int, frame: Any) -> None:
    _EARLY_SIGNAL["signum"] = signum


if "SUBMITIT_FOLDER" in os.environ:
    signal.signal(signal.SIGUSR2, _remember_early_signal)


def rank_threads(cpus_per_task: int, num_workers: int) -> int:
    """torch threads of one rank: the task's CPUs (srun gets `--cpus-per-task`, slurm/executors.py
    srun_args) minus one per loader worker, at least 1. Each DataLoader worker is a process that computes
    on one thread (PyTorch sets 1 in every worker) and decodes the PNGs; the rank's own threads (forward,
    backward, optimizer) get the rest. E.g. 8 CPUs and 4 workers: 4 threads; 1 CPU: 1 thread."""
    return max(1, cpus_per_task - num_workers)


def _stop_wait_s() -> float:
    """How long a stopped rank waits for SLURM to end the job (requeue, cancel or time limit)."""
    return float(os.environ.get("PIXELRNN_STOP_WAIT_S", "300"))


class Trainer(submitit.helpers.Checkpointable):
    """Picklable job: `Trainer(cfg)()` trains (or resumes) the experiment on this task's rank. `cfg` is the
    submission's JobConfig: `train` takes it as the ExperimentConfig it extends (its MLflow params and saved
    config.yaml keep the `slurm:` section)."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def __call__(self) -> Dict[str, Any]:
        # Threads per rank from the task's CPUs (rank_threads), set before torch is first imported (torch
        # reads it once) and over any value the submitting shell exported into the job. Without it each
        # rank uses every core of the node, and results differ in the last bits from a torchrun launch
        # (which sets 1), measured: the losses diverged at step 14.
        threads = rank_threads(self.cfg.slurm.cpus_per_task, self.cfg.data.num_workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch  # only now: torch reads OMP_NUM_THREADS once, at its first import (above)
        from pipeline.train.trainer import StopFlag, StopRequested, train  # imports torch: as above

        torch.set_num_threads(threads)
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        # On SLURM the sbatch script exported the rendezvous (first node of the job, port from the job id:
        # slurm/executors.py RENDEZVOUS_SETUP) and every task uses exactly that; submitit's own values
        # (the same node, a port it derives) only for the local executor, which runs no sbatch script
        # (and where a MASTER_ADDR left in the submitting shell must not count).
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and os.environ.get("MASTER_ADDR"):
            dist_env.master_addr = os.environ["MASTER_ADDR"]
        os.environ.setdefault("MASTER_PORT", str(dist_env.master_port))
        # DeepSpeed picks the GPU by LOCAL_RANK itself: leave CUDA_VISIBLE_DEVICES alone.
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        stop = StopFlag().install()
        if _EARLY_SIGNAL["signum"] is not None and stop.signum is None:
            log.warning("signal %d arrived while the job started: will checkpoint after the first step",
                        _EARLY_SIGNAL["signum"])
            stop.signum = _EARLY_SIGNAL["signum"]
        try:
            return train(self.cfg, stop)
        except StopRequested as e:
            log.warning("%s", e)
            if dist_env.rank == 0:
                self._hand_over(stop, submitit_handler)
            # Other ranks (and rank 0 after a SIGTERM) wait for SLURM to end the job rather than
            # report a failure that would race the requeue.
            time.sleep(_stop_wait_s())
            raise

    def _hand_over(self, stop, submitit_handler: Any) -> None:
        """Rank 0, every rank's checkpoint on disk: let submitit requeue (it exits this process)."""
        if stop.signum is None:  # the all-reduced flag came from another rank: give ours a moment
            deadline = time.time() + 5
            while stop.signum is None and time.time() < deadline:
                time.sleep(0.1)
        if stop.signum != signal.SIGUSR2 or not callable(submitit_handler):
            log.warning("stopped by signal %s: not requeuing (SLURM cancels or requeues this job itself)",
                        stop.signum)
            return
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        log.warning("USR2 (time-out or preemption), run %s of this job: handing over to submitit to requeue",
                    int(restarts) + 1)
        try:
            submitit_handler(signal.SIGUSR2, None)
        except subprocess.CalledProcessError as err:
            if err.returncode != -signal.SIGTERM:
                raise
            # SLURM's requeue ends every process of the job with SIGTERM, the `scontrol requeue` that submitit
            # runs included: killed before it could exit, it had requeued the job already.
            log.warning("the requeue is under way (SLURM ended `scontrol requeue` with the job's SIGTERM)")
        except submitit.core.utils.UncompletedJobError as err:
            log.error("NOT REQUEUED: %s The time-out requeue limit (slurm.max_num_timeout=%d) is reached; "
                      "the job ends at its time limit (state TIMEOUT). The checkpoint is kept: submit the "
                      "same experiment again to continue from %s/checkpoints/latest.",
                      err, self.cfg.slurm.max_num_timeout, self.cfg.run_dir)
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same callable: `train` resumes from `<run_dir>/checkpoints/latest`."""
        return submitit.helpers.DelayedSubmission(Trainer(self.cfg))
