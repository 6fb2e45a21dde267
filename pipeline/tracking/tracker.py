"""MLflow tracking, on rank 0 only (other ranks get a tracker that does nothing), and the one place that
knows the store's address and the tag schema.

One MLflow experiment per benchmark; one MLflow run per training run, continued across resumes and
SLURM requeues through the run id stored beside the checkpoints (`RunDir.mlflow_run_id`, and the store
that holds it in `RunDir.mlflow_store`). A run resumed against another store (MLFLOW_TRACKING_URI
changed) cannot continue its MLflow run there: it starts a new one in that store and says so.

A sweep (slurm/sweep.py) is one parent run (`start_sweep_run`, tag run_kind=sweep, the swept keys as params)
and one child run per point: the training run, started nested under the parent (`tracking.parent_run_id`)
and tagged with the sweep's name and the point's values (`sweep_tags`).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from pipeline.config import ExperimentConfig, flatten, to_yaml
from pipeline.fsutil import atomic_write_text
from pipeline.run_dir import RunDir

DEFAULT_URI = "sqlite:///mlflow.db"
log = logging.getLogger(__name__)

# The tag schema (`pipeline.tracking.report` reads what this module writes). run_kind tells training runs
# from report runs; the data tags decide whether two runs' bits/dim are comparable, and data_key joins them
# into one value the UI's "Group by" can use.
RUN_KIND_TAG, TRAIN_KIND, REPORT_KIND, SWEEP_KIND = "run_kind", "train", "report", "sweep"
# Sweeps: the sweep's name (parent and children), the parent's grid as JSON ({key: [values]}), MLflow's own
# parent link, and on each child `sweep.<key>` = the point's value of that key (the compare view's columns).
SWEEP_TAG, SWEEP_GRID_TAG, PARENT_TAG, SWEEP_VALUE_PREFIX = "sweep", "sweep_grid", "mlflow.parentRunId", "sweep."
DATA_TAGS = ("dataset_variant", "resize", "image_size", "manifest_sha256")
DATA_KEY_TAG = "data_key"


def data_key(tags: Mapping[str, Any]) -> str:
    """e.g. `chrabaszcz-box/box/32px/3f2a...`: the data tags of a run as one value."""
    key = "/".join(str(tags.get(k, "unknown")) for k in ("dataset_variant", "resize", "image_size"))
    return key + f"px/{str(tags.get('manifest_sha256', 'unknown'))[:12]}"


def resolve_uri(explicit: Optional[str] = None) -> str:
    """The MLflow store: `explicit` (tracking.tracking_uri, --tracking-uri), then $MLFLOW_TRACKING_URI,
    then the local SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def tracking_uri(cfg: ExperimentConfig) -> str:
    """The store an experiment logs to (`resolve_uri` of its tracking.tracking_uri)."""
    return resolve_uri(cfg.tracking.tracking_uri)


def absolute_uri(uri: str) -> str:
    """A relative SQLite store (`sqlite:///mlflow.db`) pinned to this directory: jobs may start elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def store_missing(uri: str) -> bool:
    """Whether a local store (SQLite file or file:// folder) does not exist yet (a server is never missing)."""
    if uri.startswith("sqlite:///"):
        return not Path(uri[len("sqlite:///"):]).exists()
    if uri.startswith("file://") or "://" not in uri:
        return not Path(uri.replace("file://", "", 1)).exists()
    return False


def recorded_run(run_dir: Union[Path, RunDir]) -> Tuple[Optional[str], Optional[str]]:
    """(MLflow run id, the store that holds it) recorded beside a run's checkpoints; None where not yet."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run_id = run.mlflow_run_id.read_text().strip() if run.mlflow_run_id.exists() else None
    store = run.mlflow_store.read_text().strip() if run.mlflow_store.exists() else None
    return run_id, store


def sweep_value(value: Any) -> str:
    """A swept value as an override and tag string: YAML's spelling of booleans (`false`), else str()."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def sweep_tags(sweep: str, overrides: Sequence[str]) -> Dict[str, str]:
    """The tags of a sweep's point: the sweep's name and `sweep.<key>` = value per `key=value` override."""
    tags = {SWEEP_TAG: sweep}
    for ov in overrides:
        key, value = ov.split("=", 1)
        tags[SWEEP_VALUE_PREFIX + key] = value
    return tags


def _client_experiment(client, name: str) -> str:
    """The id of MLflow experiment `name`, created when it does not exist yet."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def start_sweep_run(uri: str, experiment: str, sweep: str, grid: Mapping[str, Sequence[str]],
                    sweep_dir: Union[Path, RunDir]) -> Tuple[str, bool]:
    """The sweep's parent run in `experiment` of store `uri`: the one recorded in `sweep_dir` (a resubmission
    reuses it, set RUNNING again), else a new one (tags run_kind=sweep, the sweep's name and grid; each swept
    key a param: its values joined by commas). Returns (run id, whether it was created)."""
    import mlflow  # here: the launcher's other paths (dry runs, single jobs) never pay for it
    from mlflow.exceptions import MlflowException  # with mlflow, as above

    run = sweep_dir if isinstance(sweep_dir, RunDir) else RunDir(sweep_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id, before = recorded_run(run)
    if run_id and before == uri:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id, False
        except MlflowException:
            log.warning("the sweep's MLflow run %s is not in %s: starting a new parent run", run_id, uri)
    exp_id = _client_experiment(client, experiment)
    created = client.create_run(exp_id, run_name=sweep, tags={
        RUN_KIND_TAG: SWEEP_KIND, SWEEP_TAG: sweep, SWEEP_GRID_TAG: json.dumps({k: list(v) for k, v in grid.items()}),
        "mlflow.note.content": f"Sweep {sweep} (slurm/submit.py): one child run per point."})
    for key, values in grid.items():
        client.log_param(created.info.run_id, key, ",".join(values))
    atomic_write_text(run.mlflow_run_id, created.info.run_id)
    atomic_write_text(run.mlflow_store, uri)
    return created.info.run_id, True


def end_sweep_run(uri: str, run_id: str, status: str) -> None:
    """Close the sweep's parent run: FINISHED when every point finished, else FAILED."""
    import mlflow  # as in start_sweep_run
    mlflow.MlflowClient(tracking_uri=uri).set_terminated(run_id, status)


def run_name(cfg: ExperimentConfig) -> str:
    """e.g. `diagonal_bilstm-12x128-32px-bf16-zero2`: model, size and key settings at a glance."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    m, t = cfg.model, cfg.train
    return f"{m.name}-{m.layers}x{m.hidden}-{m.image_size}px-{t.precision}-zero{t.zero_stage}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Thin wrapper over MLflow's fluent API; every method is a no-op off rank 0."""

    def __init__(self, cfg: ExperimentConfig, enabled: bool, run_dir: Union[Path, RunDir]):
        self.enabled = enabled
        self.run_id: Optional[str] = None
        self.created = False  # a new MLflow run (params and config files still to log)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        if not enabled:
            return
        import mlflow  # here: only rank 0 pays for it (about 1 s), and the launcher reads run ids without it
        self.mlflow = mlflow
        uri = tracking_uri(cfg)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.tracking.experiment)
        run_id, before = recorded_run(self.run)
        if run_id and not self._in_store(run_id):
            log.warning("the MLflow run %s of %s is not in the store %s (it is in %s): starting a new MLflow run "
                        "here; the earlier metrics stay where they are", run_id, self.run.root, uri,
                        before or "another store")
            run_id = None
        if run_id:  # a resumed run continues its MLflow run
            run = mlflow.start_run(run_id=run_id)
        else:  # a sweep's point starts nested under the sweep's parent run
            run = mlflow.start_run(run_name=run_name(cfg), parent_run_id=cfg.tracking.parent_run_id or None)
            atomic_write_text(self.run.mlflow_run_id, run.info.run_id)
            self.created = True
        atomic_write_text(self.run.mlflow_store, uri)
        self.run_id = run.info.run_id

    def _in_store(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException  # rank 0 only, as mlflow itself
        try:
            self.mlflow.tracking.MlflowClient().get_run(run_id)
        except MlflowException:
            return False
        return True

    def start(self, cfg: ExperimentConfig, tags: Dict[str, str], ds_config: Dict[str, Any]) -> None:
        """Params (the whole effective config, flattened), tags, and the config files as artifacts (params
        once per MLflow run: MLflow refuses to change a logged param)."""
        if not self.enabled:
            return
        self.mlflow.set_tags({RUN_KIND_TAG: TRAIN_KIND, "benchmark": cfg.tracking.experiment,
                              DATA_KEY_TAG: data_key(tags), **tags})
        if cfg.tracking.sweep:
            self.mlflow.set_tags(sweep_tags(cfg.tracking.sweep, cfg.tracking.sweep_overrides))
        if self.created:
            params = {k: v for k, v in flatten(cfg).items() if not isinstance(v, dict)}
            # Headline hyperparameters also as short top-level names for the compare view.
            params.update(model=cfg.model.name, layers=cfg.model.layers, hidden=cfg.model.hidden,
                          image_size=cfg.model.image_size, precision=cfg.train.precision,
                          zero_stage=cfg.train.zero_stage, global_batch_size=cfg.train.global_batch_size,
                          optimizer=cfg.optim.name, base_lr=cfg.optim.lr)
            self.mlflow.log_params(params)
            self.mlflow.log_text(to_yaml(cfg), "config/experiment.yaml")
            self.mlflow.log_text(json.dumps(ds_config, indent=2), "config/deepspeed.json")

    def metrics(self, values: Dict[str, float], step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics(values, step=step)

    def artifact(self, path: Path, folder: Optional[str] = None) -> None:
        if self.enabled:
            self.mlflow.log_artifact(str(path), folder)

    def finish(self, final: Dict[str, Any], status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self.mlflow.log_dict(final, "final_metrics.json")
        self.mlflow.end_run(status=status)

    def suspend(self) -> None:
        """End the run as KILLED-for-now; a requeued job reopens it by id."""
        if self.enabled:
            self.mlflow.end_run(status="KILLED")
