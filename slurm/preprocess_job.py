"""A `kind: preprocess` experiment: a job array of `preprocessing build --num-tasks K --task-id I`,
then `preprocessing finalize` once every task has succeeded.

On SLURM the finalize job is submitted at once with `--dependency=afterok:<array>` (and
`--kill-on-invalid-dep=yes`, so a failed task cancels it instead of leaving it pending forever);
without a controller (or with --local) the K tasks run side by side through submitit's local executor
and finalize runs after them. Task I renders the blocks b with b % K == I, so the shards and manifests
are byte-identical to a one-process build whatever K is (see preprocessing/builder.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

import submitit

import preprocessing
from pipeline.config import ConfigError
from slurm import jobs as jobs_mod
from slurm.config import JobConfig, PreprocessConfig, build_kwargs
from slurm.executors import make_single_task_executor, sbatch_script


class BuildTask(submitit.helpers.Checkpointable):
    """Picklable: `BuildTask(p)(task_id)` renders this array task's blocks. Checkpointable because a
    rerun skips the blocks already built: a timed-out or preempted task is requeued and resumes."""

    def __init__(self, p: PreprocessConfig):
        self.p = p

    def __call__(self, task_id: int) -> Dict[str, Any]:
        return preprocessing.build(**build_kwargs(self.p), task_id=task_id, progress=False)


class FinalizeTask:
    """Picklable: lays out the shards and writes the manifests; returns a summary per size."""

    def __init__(self, p: PreprocessConfig):
        self.p = p

    def __call__(self) -> Dict[int, Dict[str, Any]]:
        manifests = preprocessing.finalize(self.p.out, self.p.split, self.p.sizes)
        return {size: {"num_samples": m["num_samples"], "num_shards": len(m["shards"]),
                       "num_classes": m["num_classes"], "skipped": len(m["skipped"])}
                for size, m in manifests.items()}


def check_inputs(cfg: JobConfig) -> None:
    """The inputs must exist before anything is submitted (checked here, not at config load, so that
    an experiment file can be loaded and inspected on a machine without the data)."""
    p = cfg.preprocess
    for key in ("source", "val_labels", "class_map"):
        value = getattr(p, key)
        if value and not Path(value).exists():
            raise ConfigError(f"'preprocess.{key}' does not exist: {value}")


def absolutize(cfg: JobConfig) -> None:
    """Jobs may start in another directory: pin the source and output paths now."""
    p = cfg.preprocess
    p.source = str(Path(p.source).resolve())
    p.out = str(Path(p.out).resolve())
    for key in ("val_labels", "class_map"):
        if getattr(p, key):
            setattr(p, key, str(Path(getattr(p, key)).resolve()))


def _executors(cfg: JobConfig, local: bool, folder: Path, array_job_id: str = "<ARRAY_JOB_ID>"):
    p = cfg.preprocess
    build_ex = make_single_task_executor(cfg, local, folder, f"{cfg.name}-build",
                                         slurm_array_parallelism=p.array_parallelism or p.num_tasks)
    finalize_ex = make_single_task_executor(
        cfg, local, folder, f"{cfg.name}-finalize",
        additional={"dependency": f"afterok:{array_job_id}", "kill-on-invalid-dep": "yes"})
    return build_ex, finalize_ex


def dry_run(cfg: JobConfig, use_slurm: bool, folder: Path) -> str:
    """The two sbatch scripts (array, then finalize) or, locally, what would run."""
    p = cfg.preprocess
    if not use_slurm:
        return (f"# no SLURM controller answers: would run {p.num_tasks} build task(s) through the local "
                f"executor, then finalize: {p.source} -> {p.out}/<size>/{p.split}-*.tar, sizes {p.sizes}")
    build_ex, finalize_ex = _executors(cfg, False, folder)
    return (f"# 1/2: build array of {p.num_tasks} task(s)\n{sbatch_script(build_ex, p.num_tasks)}\n"
            f"# 2/2: finalize, after every array task succeeded\n{sbatch_script(finalize_ex)}")


def submit(cfg: JobConfig, use_slurm: bool, folder: Path, follow: bool) -> int:
    """Submit (or run locally) the array and finalize; with follow (always locally) wait and report."""
    p = cfg.preprocess
    build_ex, _ = _executors(cfg, not use_slurm, folder)
    tasks = build_ex.map_array(BuildTask(p), list(range(p.num_tasks)))
    where = "SLURM" if use_slurm else "local executor"
    array_id = tasks[0].job_id.split("_")[0]
    print(f"submitted {cfg.name}: build array {array_id} of {p.num_tasks} task(s) ({where})")
    if not use_slurm:  # the local finalize must not start before the tasks end
        _follow_or_wait(tasks, follow)
        if not _tasks_ok(tasks):
            return 1
    _, finalize_ex = _executors(cfg, not use_slurm, folder, array_id)
    fin = finalize_ex.submit(FinalizeTask(p))
    print(f"  finalize:    job {fin.job_id}" + (f" (after array {array_id} succeeds)" if use_slurm else ""))
    print(f"  logs:        {folder}")
    print(f"  output:      {p.out}/<size>/{p.split}-NNNNNN.tar + {p.split}.json, sizes {p.sizes}")
    if use_slurm and not follow:
        return 0
    _follow_or_wait(tasks + [fin] if use_slurm else [fin], follow)
    if use_slurm and not _tasks_ok(tasks):
        return 1
    return _report_finalize(fin, p)


def _follow_or_wait(job_list: List[Any], follow: bool) -> None:
    if follow:
        logs = [path for j in job_list for path in (j.paths.stdout, j.paths.stderr)]
        jobs_mod.follow(job_list, logs)
    else:
        jobs_mod.wait(job_list)


def _tasks_ok(tasks: List[Any]) -> bool:
    ok = True
    for t in tasks:
        out = jobs_mod.outcome(t)
        if not out.ok:
            print(f"error: build {jobs_mod.describe_failure(t, out)}", file=sys.stderr)
            ok = False
    if not ok:
        print("error: the build array failed; rerun the same command to resume (built blocks are kept)",
              file=sys.stderr)
    return ok


def _report_finalize(fin, p: PreprocessConfig) -> int:
    out = jobs_mod.outcome(fin)
    if not out.ok:
        print(f"error: finalize {jobs_mod.describe_failure(fin, out)}", file=sys.stderr)
        return 1
    for size, s in sorted(out.results[0].items()):
        print(f"size {size}: {s['num_samples']} samples in {s['num_shards']} shards, {s['num_classes']} "
              f"classes, {s['skipped']} skipped -> {Path(p.out) / str(size) / (p.split + '.json')}")
    return 0
