"""Everything the test modules share, in one place: `from helpers import train_2ranks, tiny, ...`
(tests/conftest.py puts tests/ on sys.path). Test modules import from here, never from each other or
from a conftest.

  launch       2-rank launches that can be killed, a run's metrics, MLflow stores
  faults       fault-injection launches, checkpoint observers, a small filesystem for full-disk faults
  prep         tiny images, shard readers, the preprocessing CLI
  tiny_models  tiny model configurations and the causality probe
  mlflow_runs  a real MLflow store of two finished smoke runs
  mlflow_ui    `mlflow ui` on 127.0.0.1 and headless Chromium looking at it
  slurm_jobs   submissions to the real local SLURM cluster: job ids, job state, the run's results
"""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the DeepSpeed launches of the tests run on CPU

from .faults import (CHAIN, CHAIN_STEPS, DIST_TIMEOUT_S, LAUNCH_TIMEOUT, SEED, CheckpointObserver, Launch,  # noqa: E402
                     fill_up, sha256_tree, small_filesystem, train_args, watch)
from .launch import (REPO, free_port, hex_losses, kill_tree, metrics, mlflow_store, process_groups,  # noqa: E402
                     signal_groups, train_2ranks)
from .mlflow_runs import COMMON, SMOKE_RUNS, make_smoke_store  # noqa: E402
from .mlflow_ui import CHROMIUM, browse, mlflow_ui, shown, ui_urls  # noqa: E402
from .prep import (encode, mnist_like, noise_image, output_bytes, read_samples, run_cli, write,  # noqa: E402
                   write_amat, write_idx)
from .slurm_jobs import (FAST, hostnames, job_id, one_mlflow_run, resumed_steps, sacct_job, scontrol_job,  # noqa: E402
                         start, submit_cmd, task_pids, wait, wait_until_idle)
from .tiny_models import ALL, ARCHS, TINY, changed_matrix, peaky, perturb_each_subpixel, tiny  # noqa: E402

__all__ = [
    "CHAIN", "CHAIN_STEPS", "DIST_TIMEOUT_S", "LAUNCH_TIMEOUT", "SEED", "CheckpointObserver", "Launch", "fill_up",
    "sha256_tree", "small_filesystem", "train_args", "watch",
    "REPO", "free_port", "hex_losses", "kill_tree", "metrics", "mlflow_store", "process_groups", "signal_groups",
    "train_2ranks",
    "COMMON", "SMOKE_RUNS", "make_smoke_store",
    "CHROMIUM", "browse", "mlflow_ui", "shown", "ui_urls",
    "encode", "noise_image", "output_bytes", "read_samples", "run_cli", "write", "mnist_like", "write_amat",
    "write_idx",
    "FAST", "hostnames", "job_id", "one_mlflow_run", "resumed_steps", "sacct_job", "scontrol_job", "start",
    "submit_cmd", "task_pids", "wait", "wait_until_idle",
    "ALL", "ARCHS", "TINY", "changed_matrix", "peaky", "perturb_each_subpixel", "tiny",
]
