"""Submit an experiment: `python slurm/submit.py --exp NAME [dotted.key=value ...] [options]`.

Goes through SLURM (submitit) when a controller answers `scontrol ping`, else runs the same job locally
through submitit's local executor with as many tasks as the config asks (`--local` forces that).
The arguments are the training script's own (`pipeline.train.get_args_parser`) plus launch options.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python slurm/submit.py` from a checkout, installed or not
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.config import (EXPERIMENTS_DIR, ConfigError, ExperimentConfig, get_args_parser,  # noqa: E402
                             load_config, to_yaml)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parent = get_args_parser()
    p = argparse.ArgumentParser("slurm/submit.py", parents=[parent], add_help=False,
                                description=__doc__.splitlines()[0])
    for action in p._actions:  # --exp is optional with --list
        if action.dest == "exp":
            action.required = False
    p.add_argument("--nodes", type=int, help="override slurm.nodes")
    p.add_argument("--gpus-per-node", type=int, help="override slurm.gpus_per_node (one task per GPU)")
    p.add_argument("--partition", help="override slurm.partition")
    p.add_argument("--time", type=int, help="override slurm.timeout_min (minutes)")
    p.add_argument("--local", action="store_true", help="run here through submitit's local executor")
    p.add_argument("--dry-run", action="store_true", help="validate and print the sbatch script; submit nothing")
    p.add_argument("--follow", action="store_true", help="stream the rank-0 log until the job ends")
    p.add_argument("--list", action="store_true", help="list the experiments in configs/experiments/")
    args = p.parse_args(argv)
    if not args.list and not args.exp:
        p.error("--exp is required (or --list)")
    return args


def list_experiments() -> str:
    import yaml
    lines = []
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        lines.append(f"{path.stem:32s} {desc}")
    return "\n".join(lines)


def slurm_available() -> bool:
    """A controller answers. (submitit's AutoExecutor picks SLURM whenever srun exists, even with it down.)"""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def resource_overrides(args: argparse.Namespace) -> List[str]:
    pairs = [("slurm.nodes", args.nodes), ("slurm.gpus_per_node", args.gpus_per_node),
             ("slurm.partition", args.partition), ("slurm.timeout_min", args.time)]
    return [f"{k}={v}" for k, v in pairs if v is not None]


def absolutize(cfg: ExperimentConfig) -> None:
    """Jobs may start in another directory: pin paths and the MLflow store to absolute ones now."""
    cfg.output_dir = str(cfg.run_dir.resolve())
    cfg.data.root = str(Path(cfg.data.root).resolve())
    from pipeline.tracking import tracking_uri
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    cfg.tracking.tracking_uri = uri


def prepare_data(cfg: ExperimentConfig) -> None:
    """`data.prepare: synthetic`: build a small generated dataset with the real preprocessing code."""
    if cfg.data.prepare != "synthetic":
        return
    root = Path(cfg.data.root)
    size = cfg.model.image_size
    d = cfg.data
    if all((root / str(size) / f"{s}.json").exists() for s in (d.train_split, d.val_split)):
        return
    import preprocessing
    # One generated pool (one palette per class), split into train and a held-out validation tail.
    pool, splits = root / "_images", root / "_splits"
    if not splits.exists():
        shutil.rmtree(pool, ignore_errors=True)  # a half-made pool from an interrupted run
        preprocessing.make_synthetic(pool, num_images=d.synthetic_images + d.synthetic_val_images,
                                     classes=d.synthetic_classes, seed=cfg.train.seed)
        for path in sorted(pool.glob("*/*.*")):
            index = int(path.stem.rsplit("_", 1)[1])
            split = d.train_split if index < d.synthetic_images else d.val_split
            target = pool.with_name("_splits.tmp") / split / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        pool.with_name("_splits.tmp").rename(splits)
    for split in (d.train_split, d.val_split):
        preprocessing.build(splits / split, split, [size], root, shard_size=d.shard_size,
                            seed=cfg.train.seed)
        print(f"prepared synthetic {split} shards in {root / str(size)}")


def make_executor(cfg: ExperimentConfig, local: bool, folder: Path):
    import submitit
    s = cfg.slurm
    tasks = s.tasks_per_node or s.gpus_per_node or 1
    if local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(nodes=1, tasks_per_node=tasks * s.nodes, timeout_min=s.timeout_min,
                             gpus_per_node=s.gpus_per_node * s.nodes if s.gpus_per_node else 0)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=s.max_num_timeout)
    params = dict(name=cfg.name, nodes=s.nodes, tasks_per_node=tasks, cpus_per_task=s.cpus_per_task,
                  timeout_min=s.timeout_min, slurm_signal_delay_s=s.signal_delay_s,
                  slurm_additional_parameters=dict(s.additional))
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    ex.update_parameters(**params)
    return ex


def sbatch_script(executor) -> str:
    """The script submitit would hand to sbatch (for --dry-run)."""
    inner = executor._executor
    return inner._make_submission_file_text("<python -m submitit.core._submit FOLDER>", "DRY-RUN")


def follow(job, poll_s: float = 2.0) -> None:
    """Print the rank-0 log as it grows until the job ends."""
    printed = {"out": 0, "err": 0}
    while True:
        done = job.done()
        for kind, path in (("out", job.paths.stdout), ("err", job.paths.stderr)):
            if path.exists():
                text = path.read_text(errors="replace")
                sys.stdout.write(text[printed[kind]:])
                printed[kind] = len(text)
        sys.stdout.flush()
        if done:
            return
        time.sleep(poll_s)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_experiments())
        return 0
    try:
        cfg = load_config(args.exp, args.overrides + resource_overrides(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    use_slurm = not args.local and slurm_available()
    absolutize(cfg)
    folder = Path(cfg.output_dir) / "submitit" / time.strftime("%Y%m%d-%H%M%S")
    executor = make_executor(cfg, not use_slurm, folder)
    if args.dry_run:
        if use_slurm or hasattr(executor, "_executor"):
            print(sbatch_script(executor))
        else:
            print(f"# no SLURM controller answers: would run locally with {cfg.ranks()} task(s)\n{to_yaml(cfg)}")
        return 0
    prepare_data(cfg)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking.tracking_uri
    from slurm.launcher import Trainer
    job = executor.submit(Trainer(cfg))
    where = "SLURM" if use_slurm else "local executor"
    print(f"submitted {cfg.name} as job {job.job_id} ({where}, {cfg.ranks()} task(s))")
    print(f"  logs:        {job.paths.stdout} / {job.paths.stderr}")
    print(f"  checkpoints: {Path(cfg.output_dir) / 'checkpoints'}")
    print(f"  MLflow:      experiment '{cfg.tracking.experiment}' in {cfg.tracking.tracking_uri}"
          f" (run id in {Path(cfg.output_dir) / 'mlflow_run_id'})")
    if not (args.follow or not use_slurm):
        return 0
    # Local jobs live as long as this process: wait for them. SLURM jobs only with --follow.
    if args.follow:
        follow(job)
    try:
        results = job.results()
    except Exception as e:  # submitit wraps the job's exception; its log tells the rest
        print(f"job {job.job_id} failed ({job.state}): {e}\n  see {job.paths.stderr}", file=sys.stderr)
        return 1
    summary = results[0]
    print(f"job {job.job_id} finished: validation {summary['val_bits_per_dim']:.4f} bits/dim after "
          f"{summary['steps']} steps")
    print(f"  checkpoint:  {summary['checkpoint']}")
    print(f"  MLflow run:  {summary['mlflow_run_id']} (experiment '{cfg.tracking.experiment}')")
    store = cfg.tracking.tracking_uri
    print(f"  open the UI: mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
