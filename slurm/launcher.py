"""The callable every SLURM (or local submitit) task runs: distributed environment, then `train(cfg)`.

Time-out and preemption (dino's pattern, adapted to DeepSpeed): submitit's USR2 handler would make
rank 0 alone call `checkpoint()` and exit at once, but a DeepSpeed checkpoint must be written by every
rank together. So the handler here only raises a flag; the training loop sees it at the next step
boundary on all ranks, every rank writes the checkpoint, and only then does rank 0 hand over to
submitit's handler, which calls `checkpoint()` (a resubmission of this same callable: the requeued job
resumes from `latest`) and requeues the job, within submitit's limit on time-out requeues.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Dict

import submitit

from pipeline.config import ExperimentConfig
from pipeline.train import StopFlag, StopRequested, train

log = logging.getLogger("slurm.launcher")


class Trainer(submitit.helpers.Checkpointable):
    """Picklable job: `Trainer(cfg)()` trains (or resumes) the experiment on this task's rank."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def __call__(self) -> Dict[str, Any]:
        dist_env = submitit.helpers.TorchDistributedEnvironment()
        # DeepSpeed picks the GPU by LOCAL_RANK itself: leave CUDA_VISIBLE_DEVICES alone.
        os.environ.setdefault("MASTER_PORT", str(dist_env.master_port))
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)
        if self.cfg.slurm.cpus_per_task:
            os.environ.setdefault("OMP_NUM_THREADS", str(self.cfg.slurm.cpus_per_task))
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        stop = StopFlag().install()
        try:
            return train(self.cfg, stop)
        except StopRequested as e:
            log.warning("%s", e)
            if dist_env.rank == 0 and callable(submitit_handler) and stop.signum == signal.SIGUSR2:
                # Every rank's checkpoint is on disk: now let submitit requeue (it exits this process).
                submitit_handler(signal.SIGUSR2, None)
            # Other ranks wait for SLURM to end the job (requeue or cancel) instead of reporting a failure.
            time.sleep(float(os.environ.get("PIXELRNN_STOP_WAIT_S", "300")))
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Resubmit the same callable: `train` resumes from `<run_dir>/checkpoints/latest`."""
        return submitit.helpers.DelayedSubmission(Trainer(self.cfg))
