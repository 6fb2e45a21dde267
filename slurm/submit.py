"""Submit an experiment: `python slurm/submit.py --exp NAME [dotted.key=value ...] [options]`.

Goes through SLURM (submitit) when a controller answers `scontrol ping`, else runs the same job locally
through submitit's local executor with as many tasks as the config asks (`--local` forces that).
The arguments are the training script's own (`pipeline.config.get_args_parser`) plus launch options,
which are `slurm.*` overrides of the experiment as a job (slurm/config.py: `load_job_config`).
Training experiments (`kind: train`) run one task per GPU (slurm/launcher.py: time-outs checkpoint and
requeue); preprocessing experiments (`kind: preprocess`) run a build array plus finalize
(slurm/preprocess_job.py). Exit status: 0 done (or submitted), 1 the job failed, was cancelled or
timed out, 2 bad config or arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

if __name__ == "__main__" and not __package__:  # `python slurm/submit.py`: a script, not an import
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, installed or not

from pipeline.config import ConfigError, ExperimentConfig, check_data_paths, get_args_parser, to_yaml  # noqa: E402
from pipeline.config.files import list_experiments  # noqa: E402
from pipeline.data.manifest import ShardError, read_manifest, shard_counts  # noqa: E402
from pipeline.data.plan import EvalPlan, TrainPlan, percent, plan_line  # noqa: E402
from pipeline.run_dir import RunDir  # noqa: E402
from pipeline.tracking.tracker import absolute_uri, recorded_run, tracking_uri  # noqa: E402
from pipeline.train.checkpoint import CheckpointError, latest_step  # noqa: E402
from pipeline.train.ds_config import gradient_accumulation  # noqa: E402
import preprocessing  # noqa: E402
from slurm import jobs, preprocess_job, sweep  # noqa: E402
from slurm.config import JobConfig, load_job_config  # noqa: E402
from slurm.executors import check_local_resources, make_executor, sbatch_script, slurm_available  # noqa: E402
from slurm.launcher import Trainer  # noqa: E402


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
    p.add_argument("--cpus-per-task", type=int, help="override slurm.cpus_per_task")
    p.add_argument("--mem-gb", type=int, help="override slurm.mem_gb")
    p.add_argument("--account", help="override slurm.account")
    p.add_argument("--qos", help="override slurm.qos")
    p.add_argument("--constraint", help="override slurm.constraint")
    p.add_argument("--local", action="store_true", help="run here through submitit's local executor")
    p.add_argument("--dry-run", action="store_true", help="validate and print the sbatch script; submit nothing")
    p.add_argument("--follow", action="store_true", help="stream the rank-0 log until the job ends")
    p.add_argument("--list", action="store_true", help="list the experiments in configs/experiments/")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="sweep KEY over the values (repeat for a grid): one job array (slurm/sweep.py)")
    p.add_argument("--sweep-file", help="a saved sweep: configs/sweeps/NAME.yaml (or NAME)")
    p.add_argument("--sweep-name", help="the sweep's name (run folder runs/NAME, MLflow parent run)")
    p.add_argument("--max-parallel", type=int, help="a sweep's points running at once (default: all)")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    if not args.list and not args.exp and not args.sweep_file:
        p.error("--exp is required (or --list, or --sweep-file)")
    return args


def resource_overrides(args: argparse.Namespace) -> List[str]:
    """Launch options as `slurm.*` overrides, applied after the experiment's own."""
    pairs = [("slurm.nodes", args.nodes), ("slurm.gpus_per_node", args.gpus_per_node),
             ("slurm.partition", args.partition), ("slurm.timeout_min", args.time),
             ("slurm.cpus_per_task", args.cpus_per_task), ("slurm.mem_gb", args.mem_gb),
             ("slurm.account", args.account), ("slurm.qos", args.qos), ("slurm.constraint", args.constraint)]
    return [f"{k}={v}" for k, v in pairs if v is not None]


def absolutize(cfg: ExperimentConfig) -> None:
    """Jobs may start in another directory: pin paths and the MLflow store to absolute ones now."""
    cfg.output_dir = str(cfg.run_dir.resolve())
    cfg.data.root = str(Path(cfg.data.root).resolve())
    cfg.tracking.tracking_uri = absolute_uri(tracking_uri(cfg))


def prepare_data(cfg: ExperimentConfig) -> None:
    """`data.prepare`: have preprocessing build the small dataset the config asks for, before submitting."""
    d = cfg.data
    if d.prepare == "none":
        return
    splits = dict(shard_size=d.shard_size, seed=cfg.train.seed, train_split=d.train_split, val_split=d.val_split)
    if d.prepare == "synthetic":
        preprocessing.prepare_synthetic(d.root, cfg.model.image_size, train_images=d.synthetic_images,
                                        val_images=d.synthetic_val_images, classes=d.synthetic_classes, **splits)
    elif d.prepare == "photos":
        preprocessing.prepare_photos(d.root, cfg.model.image_size, val_scenes=d.photo_val_scenes, **splits)
    elif d.prepare in ("fashion_mnist", "fashion_mnist_binarized"):
        # 60,000 images: the library's shard size (2,500 a shard), not data.shard_size's (sized for toy sets)
        preprocessing.prepare_fashion_mnist(d.root, cfg.model.image_size, seed=cfg.train.seed,
                                            train_split=d.train_split, val_split=d.val_split,
                                            binarize="threshold" if d.prepare == "fashion_mnist_binarized" else None)


def submit_training(cfg: JobConfig, use_slurm: bool, folder: Path, follow: bool) -> int:
    """Submit `Trainer(cfg)`; locally (or with follow) wait for it and report how it ended."""
    executor = make_executor(cfg, not use_slurm, folder)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking.tracking_uri
    job = executor.submit(Trainer(cfg))
    where = "SLURM" if use_slurm else "local executor"
    run_dir = Path(cfg.output_dir)
    print(f"submitted {cfg.name} as job {job.job_id} ({where}, {cfg.slurm.ranks()} task(s))")
    print(f"  logs:        {job.paths.stdout} / {job.paths.stderr}  (rank 0; other ranks beside them)")
    print(f"  checkpoints: {RunDir(run_dir).checkpoints}  (resumes from 'latest' when present)")
    print(f"  MLflow:      {mlflow_run_text(run_dir, cfg.tracking.tracking_uri)} in experiment "
          f"'{cfg.tracking.experiment}', store {cfg.tracking.tracking_uri}")
    if use_slurm and not follow:
        print(f"  follow:      tail -f {job.paths.stderr}   cancel: scancel {job.job_id}")
        return 0
    # Local jobs live as long as this process: wait for them. SLURM jobs only with --follow.
    if follow:
        jobs.follow([job], [job.paths.stdout, job.paths.stderr])
    else:
        jobs.wait([job])
    return report_training(job, cfg)


PLAN_FLOOR = 0.99   # a real submission refuses an epoch that leaves out more than 1 % of the train split


def data_plan(cfg: JobConfig) -> Tuple[str, TrainPlan]:
    """The data plan line and the training plan, from the train and validation
    manifests alone (no shard is read): pipeline/data/plan.py, evaluated for this job's ranks. Raises
    ShardError for a missing or malformed manifest."""
    d, t, world = cfg.data, cfg.train, cfg.slurm.ranks()
    train_counts, val_counts = (tuple(shard_counts(read_manifest(d.root, cfg.model.image_size, split)[0]))
                                for split in (d.train_split, d.val_split))
    train = TrainPlan(train_counts, t.seed, world, max(1, d.num_workers), t.micro_batch_size)
    val = EvalPlan(val_counts, world, t.micro_batch_size, t.eval_max_batches)
    return plan_line(train, val, gradient_accumulation(cfg, world)), train


def plan_refusal(cfg: JobConfig, train: TrainPlan) -> Optional[str]:
    """Why a plan that leaves out more than 1 % of the train split is refused, and the fix."""
    if train.fraction >= PLAN_FLOOR:
        return None
    d, t = cfg.data, cfg.train
    return (f"an epoch would use only {percent(train)} % of the train split (at least "
            f"{100 * PLAN_FLOOR:.0f} % is required): every one of the {cfg.slurm.ranks()} ranks × "
            f"{max(1, d.num_workers)} loader workers reads whole micro-batches of {t.micro_batch_size}; "
            f"lower data.num_workers or train.micro_batch_size, or train on fewer ranks")


def print_data_plan(cfg: JobConfig, dry_run: bool) -> None:
    """Print the data plan; a real submission refuses one it cannot compute or that is below 99 %."""
    if dry_run and not Path(cfg.data.root).exists():
        why = ("see the warning" if cfg.data.prepare == "none"
               else f"a real submission builds it first: data.prepare={cfg.data.prepare}")
        print(f"data plan: cannot be computed: data.root {cfg.data.root} is missing ({why})")
        return
    try:
        line, train = data_plan(cfg)
    except ShardError as e:  # e.g. no manifest
        if not dry_run:
            raise ConfigError(f"the data plan cannot be computed: {e}") from None
        print(f"data plan: cannot be computed: {e}")
        return
    print(line)
    refusal = plan_refusal(cfg, train)
    if refusal and dry_run:
        print(f"warning: {refusal} (a real submission refuses it)", file=sys.stderr)
    elif refusal:
        raise ConfigError(refusal)


def mlflow_run_text(run_dir: Path, store: str) -> str:
    """Which MLflow run the job will log to: the one named beside the checkpoints (kept across requeues),
    unless that run lives in another store (then the job starts a new one there and says so)."""
    run_id, before = recorded_run(run_dir)
    if run_id is None:
        return f"a new run (its id will be written to {RunDir(run_dir).mlflow_run_id})"
    if before is not None and before != store:
        return f"a new run: this run's MLflow run {run_id} is in another store ({before})"
    return f"run {run_id} (continued)"


def report_training(job, cfg: ExperimentConfig) -> int:
    """Print the final summary, or a clear message (and status 1) for a failed/cancelled/timed-out job."""
    out = jobs.outcome(job)
    if not out.ok:
        print(f"error: {jobs.describe_failure(job, out)}", file=sys.stderr)
        return 1
    summary = out.results[0]
    nats = summary.get("val_nats_per_image")  # both units: the paper's MNIST results are in nats per image
    print(f"job {job.job_id} finished: validation {summary['val_bits_per_dim']:.4f} bits/dim"
          + (f" ({nats:.2f} nats/image)" if nats is not None else "") + f" after {summary['steps']} steps")
    codecs = [f"{name} {summary[k]:.4f}" for k, name in (("png_bits_per_dim", "PNG"), ("webp_bits_per_dim", "WebP"),
                                                         ("jpegxl_bits_per_dim", "JPEG XL")) if k in summary]
    if codecs:  # tracking.codec_baselines: the same validation images as files
        print(f"  baselines:   {', '.join(codecs)} bits/dim on the same validation images")
    print(f"  checkpoint:  {summary['checkpoint']}")
    print(f"  MLflow run:  {summary['mlflow_run_id']} (experiment '{cfg.tracking.experiment}')")
    store = cfg.tracking.tracking_uri
    print(f"  open the UI: mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
    return 0


def already_complete(cfg: ExperimentConfig) -> Optional[str]:
    """What to say instead of submitting a run that has already reached train.max_steps (the job would
    only load its last checkpoint and evaluate it again)."""
    if not cfg.checkpoint.resume:
        return None
    run = RunDir(cfg.run_dir)
    try:
        step = latest_step(run.checkpoints)
    except CheckpointError:
        return None  # the job itself reports a broken `latest`
    if step is None or step < cfg.train.max_steps:
        return None
    final, result = run.read_final(), ""
    with contextlib.suppress(TypeError, KeyError, ValueError):
        result = f"; its validation bits/dim is {final['val_bits_per_dim']:.4f} ({run.final_metrics})"
    return (f"run '{cfg.name}' is already complete at step {step} (train.max_steps={cfg.train.max_steps}, "
            f"checkpoints in {run.checkpoints}){result}. Nothing was submitted.\n"
            f"  start a fresh run:  add  output_dir={cfg.run_dir}-2  (a new folder; the MLflow run is new too)\n"
            f"  train it further:   add  train.max_steps={2 * step}  (resumes from step {step})")


def dry_run_training(cfg: JobConfig, use_slurm: bool, folder: Path) -> str:
    executor = make_executor(cfg, not use_slurm, folder)
    if use_slurm:
        return sbatch_script(executor)
    return f"# no SLURM controller answers: would run locally with {cfg.slurm.ranks()} task(s)\n{to_yaml(cfg)}"


def warn_missing(check, cfg: ExperimentConfig) -> None:
    """--dry-run checks a submission, e.g. from a login node that does not see the data: a missing input
    path is a warning there (the script is printed anyway); a real submission refuses it."""
    try:
        check(cfg)
    except ConfigError as e:
        print(f"warning: {e} (not seen from here; a real submission refuses it)", file=sys.stderr)


# A sweep's points are submitted as single runs are (slurm/sweep.py).
SWEEP_STEPS = sweep.SubmitSteps(absolutize, check_data_paths, warn_missing, prepare_data, already_complete,
                                print_data_plan, check_local_resources)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(f"{name:32s} {desc}" for name, desc in list_experiments()))
        return 0
    try:
        if args.sweep or args.sweep_file:
            spec = sweep.spec_from_args(args.exp, args.sweep, args.sweep_file, args.sweep_name)
            return sweep.run_sweep(spec, args.overrides + resource_overrides(args), SWEEP_STEPS,
                                   use_slurm=not args.local and slurm_available(), dry_run=args.dry_run,
                                   follow=args.follow, max_parallel=args.max_parallel)
        # Data paths are checked below: a dry run (e.g. on a login node that does not see the data) only
        # warns about them, a real submission refuses them.
        cfg = load_job_config(args.exp, args.overrides + resource_overrides(args))
        use_slurm = not args.local and slurm_available()
        if cfg.kind == "preprocess":
            preprocess_job.absolutize(cfg)
            folder = RunDir(cfg.run_dir.resolve()).submitit / time.strftime("%Y%m%d-%H%M%S")
            if args.dry_run:
                warn_missing(preprocess_job.check_inputs, cfg)
                print(preprocess_job.dry_run(cfg, use_slurm, folder))
                return 0
            preprocess_job.check_inputs(cfg)
            return preprocess_job.submit(cfg, use_slurm, folder, args.follow)
        absolutize(cfg)
        folder = RunDir(cfg.output_dir).submitit / time.strftime("%Y%m%d-%H%M%S")
        if args.dry_run:
            warn_missing(check_data_paths, cfg)
            if not use_slurm:
                warn_missing(check_local_resources, cfg)
            print(dry_run_training(cfg, use_slurm, folder))
            print_data_plan(cfg, dry_run=True)
            return 0
        check_data_paths(cfg)
        if not use_slurm:  # every task would run here: this machine must have the GPUs the job asks for
            check_local_resources(cfg)
        done = already_complete(cfg)
        if done:
            print(done)
            return 0
        prepare_data(cfg)
        print_data_plan(cfg, dry_run=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return submit_training(cfg, use_slurm, folder, args.follow)


if __name__ == "__main__":
    sys.exit(main())
