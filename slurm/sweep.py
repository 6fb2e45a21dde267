"""Sweeps: one experiment over a grid of overrides, as one SLURM job array (the launcher's knowledge of them).

    python slurm/submit.py --exp cifar10_row_lstm --sweep model.layers=1,2,3,6,9,12 [--max-parallel K]
    python slurm/submit.py --sweep-file configs/sweeps/paper_depth.yaml [--dry-run | --local | --follow]

A sweep is a pure expansion: its points are the cartesian product of the swept values (several `--sweep`
flags make a grid), each point the experiment plus the fixed overrides plus its own `key=value`s, loaded and
validated like a single submission (`load_job_config`) before anything is submitted; a bad value names the
point. Each point has its own run folder, `<sweep dir>/<key=value,...>` (the sweep dir is `runs/<sweep>`, or
the `output_dir=` given), so requeue and exact resume work per point as for a single run, and submitting
the same sweep again submits only the points that are neither complete nor still queued. On SLURM the
points run as the elements of one job array (each element keeps the experiment's nodes x tasks; submitit
requeues an element alone, `scontrol requeue <array>_<i>`); `--local` runs them one after another.
In MLflow the sweep is a parent run and each point a child run (pipeline/tracking/tracker.py).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from pipeline.config import ConfigError, to_yaml
from pipeline.fsutil import atomic_write_text
from pipeline.run_dir import RunDir
from pipeline.tracking.tracker import end_sweep_run, start_sweep_run, sweep_value
from slurm import jobs
from slurm.config import JobConfig, load_job_config
from slurm.executors import make_executor, sbatch_script
from slurm.job_state import UNFINISHED, head
from slurm.launcher import Trainer

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "configs" / "sweeps"
# Keys a sweep cannot vary (nor anything under them): the points share one run-folder scheme, one MLflow
# experiment and store (the parent run's), and one sbatch script (a job array has one allocation shape).
FIXED_KEYS = ("output_dir", "name", "kind", "tracking.experiment", "tracking.tracking_uri", "tracking.run_name",
              "tracking.parent_run_id", "tracking.sweep", "tracking.sweep_overrides", "slurm")


@dataclass
class SweepSpec:
    """What a sweep is: a name, an experiment, the grid (key -> values as override strings, in order) and
    the overrides every point shares."""
    name: str
    experiment: str
    grid: Dict[str, List[str]]
    overrides: List[str] = field(default_factory=list)
    description: str = ""

    def points(self) -> List[List[str]]:
        """The cartesian product of the grid, first key slowest: each point its `key=value` overrides."""
        keys = list(self.grid)
        return [[f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*self.grid.values())]


@dataclass
class Point:
    number: int                    # 1-based, in grid order (stable across resubmissions)
    overrides: List[str]           # the point's own key=value's
    cfg: JobConfig

    @property
    def label(self) -> str:
        """`model.layers=3` or `model.residual=false,model.skip=true`: the run folder's and the run's name."""
        return point_label(self.overrides)


def point_label(overrides: Sequence[str]) -> str:
    return ",".join(overrides)


def _check_value(key: str, value: str) -> str:
    if value == "" or value.startswith(".") or any(c in value for c in "/,{}"):
        raise ConfigError(f"sweep value {value!r} of '{key}' cannot name a run folder (empty, a leading '.', "
                          f"or one of / , {{ }})")
    return value


def _check_key(key: str) -> str:
    if not key or any(key == k or key.startswith(k + ".") for k in FIXED_KEYS):
        raise ConfigError(f"'{key}' cannot be swept: the points of a sweep share it (run folders, the MLflow "
                          f"experiment and store, and the job array's resources)")
    return key


def parse_sweep_flags(flags: Sequence[str]) -> Dict[str, List[str]]:
    """`["model.layers=1,2,3", "optim.lr=1e-3,3e-4"]` -> the grid {key: [values]}."""
    grid: Dict[str, List[str]] = {}
    for flag in flags:
        key, sep, values = flag.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--sweep {flag!r} is not of the form dotted.key=v1,v2,...")
        if key in grid:
            raise ConfigError(f"--sweep names '{key}' twice: give all its values in one flag")
        grid[_check_key(key)] = [_check_value(key, v.strip()) for v in values.split(",")]
    return grid


def load_sweep_file(path: str) -> SweepSpec:
    """A saved sweep: `configs/sweeps/NAME.yaml` (or a name in that folder) with `experiment:`, `grid:`
    ({key: [values]}), optional `overrides:` ([key=value]) and `description:`; its name is the file's stem."""
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        p = SWEEPS_DIR / f"{path}.yaml"
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read sweep file {p}: {e}") from None
    unknown = set(raw) - {"experiment", "grid", "overrides", "description"}
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)} (a sweep file has experiment, grid, overrides, "
                          f"description)")
    grid = raw.get("grid")
    if not raw.get("experiment") or not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{p}: a sweep file needs 'experiment' and a non-empty 'grid' mapping of key: [values]")
    parsed = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{p}: grid '{key}' must be a non-empty list of values")
        parsed[_check_key(str(key))] = [_check_value(str(key), sweep_value(v)) for v in values]
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{p}: 'overrides' must be a list of dotted.key=value")
    return SweepSpec(p.stem, str(raw["experiment"]), parsed, [str(o) for o in overrides],
                     str(raw.get("description", "")))


def spec_from_args(exp: Optional[str], flags: Sequence[str], sweep_file: Optional[str],
                   name: Optional[str]) -> SweepSpec:
    """The sweep of submit.py's `--sweep` flags (named `--sweep-name`, else `<exp>-<keys>`) or `--sweep-file`."""
    if sweep_file:
        if flags:
            raise ConfigError("give either --sweep flags or --sweep-file, not both")
        spec = load_sweep_file(sweep_file)
        if exp and exp != spec.experiment:
            raise ConfigError(f"--exp {exp} differs from the sweep file's experiment '{spec.experiment}'")
        spec.name = name or spec.name
        return spec
    if not exp:
        raise ConfigError("--sweep needs --exp (or use --sweep-file)")
    grid = parse_sweep_flags(flags)
    return SweepSpec(name or f"{Path(exp).stem}-{'-'.join(grid)}", exp, grid)


def sweep_dir(spec: SweepSpec, overrides: Sequence[str]) -> Path:
    """Where the sweep's points live: the last `output_dir=` of the overrides, else `runs/<sweep>`; absolute."""
    given = [ov.split("=", 1)[1] for ov in overrides if ov.split("=", 1)[0].strip() == "output_dir"]
    return Path((given[-1] if given else "runs/{name}").format(name=spec.name)).resolve()


def load_points(spec: SweepSpec, extra: Sequence[str]) -> List[Point]:
    """Every point loaded and validated (nothing submitted yet); a bad point is named: `point 3 of 6
    (model.layers=0): 'model.layers' must be at least 1, got 0`."""
    fixed = [ov for ov in [*spec.overrides, *extra] if ov.split("=", 1)[0].strip() != "output_dir"]
    swept = [k for k in spec.grid if any(ov.split("=", 1)[0].strip() == k for ov in fixed)]
    if swept:
        raise ConfigError(f"'{swept[0]}' is both swept and given as a fixed override")
    root, points = sweep_dir(spec, [*spec.overrides, *extra]), []
    combos = spec.points()
    for number, ovs in enumerate(combos, 1):
        try:
            cfg = load_job_config(spec.experiment, [*fixed, *ovs])
        except ConfigError as e:
            raise ConfigError(f"point {number} of {len(combos)} ({point_label(ovs)}): {e}") from None
        if cfg.kind != "train":
            raise ConfigError(f"'{spec.experiment}' is not a training experiment: it cannot be swept")
        cfg.output_dir = str(root / point_label(ovs))
        cfg.tracking.sweep, cfg.tracking.sweep_overrides = spec.name, list(ovs)
        cfg.tracking.run_name = cfg.tracking.run_name or point_label(ovs)
        points.append(Point(number, list(ovs), cfg))
    return points


# ------------------------------------------------------------------------------------------ submission

@dataclass(frozen=True)
class SubmitSteps:
    """What slurm/submit.py does to one training submission, applied to each point (passed in, so that
    this module does not import the script that imports it)."""
    absolutize: Callable[[Any], None]
    check_data: Callable[[Any], None]
    warn_missing: Callable[[Callable, Any], None]
    prepare_data: Callable[[Any], None]
    already_complete: Callable[[Any], Optional[str]]
    data_plan: Callable[[Any, bool], None]        # print (dry run) or print-and-check (real) the plan line
    check_local: Callable[[Any], None]            # a local run: this machine has what the job asks for


def _state_file(root: Path) -> Path:
    """The sweep's own record beside its points: its grid and the job of each submitted point."""
    return root / "sweep.json"


def _read_state(root: Path) -> Dict[str, Any]:
    try:
        return json.loads(_state_file(root).read_text())
    except (OSError, ValueError):
        return {}


def _check_same_sweep(spec: SweepSpec, root: Path, state: Dict[str, Any]) -> None:
    if state and (state.get("grid") != spec.grid or state.get("experiment") != spec.experiment):
        raise ConfigError(f"{root} holds sweep '{state.get('name')}' of {state.get('experiment')} with grid "
                          f"{state.get('grid')}, not {spec.grid}: give another output_dir (or --sweep-name)")


def _still_queued(job_id: Optional[str], use_slurm: bool) -> bool:
    """A point submitted before whose job SLURM still has pending or running: not submitted twice."""
    if not job_id or not use_slurm:
        return False
    return head(jobs.TRACKER.state(job_id)) in UNFINISHED - {"UNKNOWN"}


def listing(points: Sequence[Point], steps: SubmitSteps) -> str:
    lines = [f"{len(points)} point(s):"]
    for p in points:
        done = steps.already_complete(p.cfg)
        lines.append(f"  point {p.number}: {p.label:40s} -> {p.cfg.output_dir}" + ("  (complete)" if done else ""))
    return "\n".join(lines)


def run_sweep(spec: SweepSpec, extra: Sequence[str], steps: SubmitSteps, *, use_slurm: bool, dry_run: bool,
              follow: bool, max_parallel: Optional[int]) -> int:
    """Validate every point, then submit the unfinished ones (one array on SLURM, one after another
    locally). Exit status as slurm/submit.py's: 0 done or submitted, 1 a point failed; ConfigError: 2."""
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {max_parallel}")
    points = load_points(spec, extra)
    root = sweep_dir(spec, [*spec.overrides, *extra])
    for p in points:
        steps.absolutize(p.cfg)
    folder = RunDir(root).submitit / time.strftime("%Y%m%d-%H%M%S")
    print(f"sweep {spec.name}: {spec.experiment} over {', '.join(spec.grid)} in {root}")
    if dry_run:
        for first in {p.cfg.data.root: p for p in points}.values():  # once per dataset
            steps.warn_missing(steps.check_data, first.cfg)
            if not use_slurm:
                steps.warn_missing(steps.check_local, first.cfg)
        print(listing(points, steps))
        for p in points:
            steps.data_plan(p.cfg, True)
        if use_slurm:
            ex = _array_executor(points[0].cfg, folder, spec.name, max_parallel or len(points))
            print(sbatch_script(ex, array_size=len(points) if len(points) > 1 else None))
        else:
            print(f"# --local (or no SLURM controller answers): would run the points here, one after another\n"
                  f"{to_yaml(points[0].cfg)}")
        return 0
    for p in points:
        steps.check_data(p.cfg)
        if not use_slurm:
            steps.check_local(p.cfg)
    state = _read_state(root)
    _check_same_sweep(spec, root, state)
    todo, queued = [], 0
    for p in points:
        job = (state.get("jobs") or {}).get(p.label)
        if steps.already_complete(p.cfg):
            print(f"  point {p.number} ({p.label}): complete, not submitted again")
        elif _still_queued(job, use_slurm):
            queued += 1
            print(f"  point {p.number} ({p.label}): still queued or running as job {job}, not submitted again")
        else:
            todo.append(p)
    for first in {p.cfg.data.root: p for p in todo}.values():  # points share their data: build it once
        steps.prepare_data(first.cfg)
    for p in todo:  # before the MLflow parent run exists: a refused point leaves nothing behind
        steps.data_plan(p.cfg, False)  # refuses a point whose epoch would leave out more than 1 %
    uri = points[0].cfg.tracking.tracking_uri
    parent, created = start_sweep_run(uri, points[0].cfg.tracking.experiment, spec.name, spec.grid, root)
    print(f"  MLflow:      {'new' if created else 'continued'} parent run {parent} in experiment "
          f"'{points[0].cfg.tracking.experiment}', store {uri}")
    if not todo:
        if not queued:
            end_sweep_run(uri, parent, "FINISHED")
        print(f"sweep {spec.name}: nothing to submit")
        return 0
    for p in todo:
        p.cfg.tracking.parent_run_id = parent
    os.environ["MLFLOW_TRACKING_URI"] = uri
    state = {"name": spec.name, "experiment": spec.experiment, "grid": spec.grid, "jobs": state.get("jobs") or {}}
    if use_slurm:
        submitted = _submit_array(todo, folder, spec.name, max_parallel or len(todo))
        state["jobs"].update({p.label: j.job_id for p, j in submitted})
        atomic_write_text(_state_file(root), json.dumps(state, indent=2))
        for p, j in submitted:
            print(f"  point {p.number} ({p.label}): job {j.job_id} -> {p.cfg.output_dir}")
        if not follow:
            print(f"  follow:      squeue -j {submitted[0][1].job_id.split('_')[0]}   table: python -m "
                  f"pipeline.tracking.report --sweep {spec.name} --tracking-uri {uri}")
            return 0
        jobs.follow([j for _, j in submitted], [])
    else:
        atomic_write_text(_state_file(root), json.dumps(state, indent=2))
        submitted = [(p, _run_local(p, follow)) for p in todo]
    return _summarise(spec, submitted, uri, parent, queued)


def _array_executor(cfg: JobConfig, folder: Path, name: str, parallel: int):
    ex = make_executor(cfg, False, folder)
    ex.update_parameters(name=name, slurm_array_parallelism=parallel)
    return ex


def _submit_array(todo: Sequence[Point], folder: Path, name: str, parallel: int) -> list:
    """One job array, element i = todo[i] (one point alone is a plain job: submitit's batch of one)."""
    ex = _array_executor(todo[0].cfg, folder, name, parallel)
    with ex.batch():
        pending = [ex.submit(Trainer(p.cfg)) for p in todo]
    what = "job array" if len(todo) > 1 else "job"
    print(f"submitted sweep {name} as {what} {pending[0].job_id.split('_')[0]} (SLURM, {len(todo)} point(s), "
          f"at most {parallel} at once, {todo[0].cfg.slurm.ranks()} task(s) each)")
    return list(zip(todo, pending))


def _run_local(p: Point, follow: bool):
    """One point through submitit's local executor, waited for: the points run one after another."""
    ex = make_executor(p.cfg, True, RunDir(p.cfg.output_dir).submitit / time.strftime("%Y%m%d-%H%M%S"))
    job = ex.submit(Trainer(p.cfg))
    print(f"  point {p.number} ({p.label}): local job {job.job_id}, {p.cfg.slurm.ranks()} task(s)", flush=True)
    if follow:
        jobs.follow([job], [job.paths.stdout, job.paths.stderr])
    else:
        jobs.wait([job])
    return job


def _summarise(spec: SweepSpec, submitted, uri: str, parent: str, queued: int) -> int:
    """One line per submitted point: its validation bits/dim, or how it failed; close the parent run
    (FAILED if a point failed, FINISHED if every point is done, left running while others are queued)."""
    failed = 0
    print(f"sweep {spec.name}:")
    for p, job in submitted:
        out = jobs.outcome(job)
        if out.ok:
            print(f"  point {p.number} ({p.label}): validation {out.results[0]['val_bits_per_dim']:.4f} bits/dim "
                  f"after {out.results[0]['steps']} steps")
        else:
            failed += 1
            print(f"  point {p.number} ({p.label}): {jobs.describe_failure(job, out)}", file=sys.stderr)
    if failed or not queued:
        end_sweep_run(uri, parent, "FAILED" if failed else "FINISHED")
    print(f"  {len(submitted) - failed} of {len(submitted)} submitted point(s) finished; table: python -m "
          f"pipeline.tracking.report --sweep {spec.name} --tracking-uri {uri}")
    return 1 if failed else 0
