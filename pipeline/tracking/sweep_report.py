"""The table of a sweep in the paper's form, from the MLflow store: one row per point.

    python -m pipeline.tracking.report --sweep paper_depth [--tracking-uri URI] [--out sweep-paper_depth.md]

A sweep (slurm/submit.py --sweep / --sweep-file) is a parent run (tag run_kind=sweep, its grid as a tag) and
one child run per point (pipeline/tracking/tracker.py). Each row: the point's swept values, its latest
validation bits/dim, steps, device-hours and MLflow status ("not started" where the point has no run yet),
and the published value of that point where `configs/benchmarks.yaml` (`sweeps: <name>`) has one, with the
gap. Beside the table, a PNG of validation bits/dim against the swept value (the published values too).
"""
from __future__ import annotations

import datetime as _dt
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import mlflow
from matplotlib.figure import Figure  # without pyplot: drawn by Agg, no display or backend needed

from pipeline.fsutil import atomic_write_bytes, atomic_write_text
from pipeline.tracking.reading import HOURS, TRAIN, VAL, ReportError, history
from pipeline.tracking.tracker import (PARENT_TAG, RUN_KIND_TAG, SWEEP_GRID_TAG, SWEEP_KIND, SWEEP_TAG,
                                       SWEEP_VALUE_PREFIX, store_missing, sweep_value)

NOT_STARTED = "not started"


@dataclass
class PointRow:
    values: Tuple[str, ...]          # the point's value of each swept key, in grid order
    run_id: Optional[str] = None
    status: str = NOT_STARTED
    val: Optional[float] = None      # latest val_bits_per_dim
    steps: int = 0
    device_hours: Optional[float] = None
    published: Optional[float] = None


@dataclass
class SweepTable:
    name: str
    experiment: str
    parent_id: str
    parent_status: str
    keys: List[str]
    rows: List[PointRow]
    other_parents: int = 0           # older parent runs of the same name (the latest is reported)
    title: str = ""
    source: str = ""


def _parents(client, name: str) -> List:
    """Every parent run of sweep `name` in the store, newest first (filtered here: a name is never pasted
    into a search expression)."""
    found = []
    for exp in client.search_experiments():
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string=f"tags.{RUN_KIND_TAG} = '{SWEEP_KIND}'",
                                      max_results=1000, page_token=token)
            found += [r for r in page if r.data.tags.get(SWEEP_TAG) == name]
            token = page.token
            if not token:
                break
    return sorted(found, key=lambda r: r.info.start_time or 0, reverse=True)


def known_sweeps(client) -> List[str]:
    names = set()
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id], filter_string=f"tags.{RUN_KIND_TAG} = '{SWEEP_KIND}'"):
            names.add(r.data.tags.get(SWEEP_TAG, "?"))
    return sorted(names)


def _published(benchmarks: dict, name: str, keys: List[str]) -> Tuple[Dict[Tuple[str, ...], float], dict]:
    entry = (benchmarks.get("sweeps") or {}).get(name) or {}
    table = {}
    for row in entry.get("results") or []:
        point = {k: sweep_value(v) for k, v in (row.get("point") or {}).items()}
        if set(point) == set(keys):
            table[tuple(point[k] for k in keys)] = float(row["val_bits_per_dim"])
    return table, entry


def collect_sweep(client, name: str, benchmarks: dict) -> SweepTable:
    """The sweep's latest parent run and one row per point of its grid, in grid order."""
    parents = _parents(client, name)
    if not parents:
        known = known_sweeps(client)
        raise ReportError(f"no sweep '{name}' in the store (known: {', '.join(known) or 'none'})")
    parent = parents[0]
    grid: Dict[str, List[str]] = json.loads(parent.data.tags[SWEEP_GRID_TAG])
    keys = list(grid)
    exp = client.get_experiment(parent.info.experiment_id)
    pid = parent.info.run_id
    if not re.fullmatch(r"[0-9a-f]+", pid):  # MLflow's own hex ids; anything else is not searched for
        raise ReportError(f"unexpected MLflow run id {pid!r}")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{pid}'",
                                  max_results=1000, order_by=["attributes.start_time DESC"])
    by_point = {}
    for c in children:  # newest first: a point's latest run wins
        by_point.setdefault(tuple(c.data.tags.get(SWEEP_VALUE_PREFIX + k, "") for k in keys), c)
    published, entry = _published(benchmarks, name, keys)
    rows = []
    for values in itertools.product(*grid.values()):
        row = PointRow(tuple(values), published=published.get(tuple(values)))
        run = by_point.get(tuple(values))
        if run is not None:
            steps = [s for key in (VAL, TRAIN) for s, _ in history(client, run.info.run_id, key)]
            row.run_id, row.status, row.steps = run.info.run_id, run.info.status, max(steps or [0])
            row.val, row.device_hours = run.data.metrics.get(VAL), run.data.metrics.get(HOURS)
        rows.append(row)
    return SweepTable(name, exp.name, pid, parent.info.status, keys, rows, len(parents) - 1,
                      entry.get("title", ""), entry.get("source", ""))


def _f(x: Optional[float], fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def render(t: SweepTable, uri: str, plot_name: str, sources: dict) -> str:
    counts: Dict[str, int] = {}
    for r in t.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Sweep `{t.name}`" + (f" — {t.title}" if t.title else ""), "",
             f"Generated {stamp} from `{uri}` by `python -m pipeline.tracking.report --sweep {t.name}`. "
             f"Experiment `{t.experiment}`, parent run `{t.parent_id}` ({t.parent_status}); {len(t.rows)} "
             f"point(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ". Lower is better; "
             f"ours: the latest `{VAL}` of each point's run.", ""]
    if t.other_parents:
        lines += [f"> {t.other_parents} older parent run(s) of this sweep's name are in the store; the latest "
                  f"is reported.", ""]
    published = any(r.published is not None for r in t.rows)
    head = [*t.keys, "val bits/dim", "steps", "device-hours", "status"] + (["published", "gap"] if published else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        cells = [*r.values, _f(r.val, ".4f"), str(r.steps), _f(r.device_hours, ".4g"), r.status]
        if published:
            gap = None if r.val is None or r.published is None else r.val - r.published
            cells += [_f(r.published, ".2f"), _f(gap, "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if published and t.source:
        src = sources.get(t.source, {})
        lines += [f"Published: {src.get('citation', t.source)} {src.get('url', '')}".rstrip() + " (validation "
                  "bits/dim; configs/benchmarks.yaml).", ""]
    lines += [f"![validation bits/dim of sweep {t.name}]({plot_name})", ""]
    return "\n".join(lines)


def plot(t: SweepTable, path: Path) -> None:
    """Validation bits/dim against the swept value (numeric axis for one numeric key, else one tick per
    point), ours and the published values. Written atomically."""
    labels = [",".join(r.values) for r in t.rows]
    try:
        xs = [float(r.values[0]) for r in t.rows] if len(t.keys) == 1 else None
    except ValueError:
        xs = None
    pos = xs if xs is not None else list(range(len(t.rows)))
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    ours = [(x, r.val) for x, r in zip(pos, t.rows) if r.val is not None]
    if ours:
        ax.plot(*zip(*ours), "-o", label="ours (validation)")
    pub = [(x, r.published) for x, r in zip(pos, t.rows) if r.published is not None]
    if pub:
        ax.plot(*zip(*pub), "s--", color="0.5", label="published")
    if xs is None:
        ax.set_xticks(pos, labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel(", ".join(t.keys))
    ax.set_ylabel("validation bits/dim")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"sweep {t.name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def make_sweep_report(uri: str, name: str, out: Optional[Path], benchmarks: dict) -> str:
    """Write `out` (default `sweep-<name>.md`) and its plot beside it; returns the message to print."""
    if store_missing(uri):
        return f"No MLflow store at {uri}: no sweep to report."
    table = collect_sweep(mlflow.MlflowClient(tracking_uri=uri), name, benchmarks)
    out = Path(out or f"sweep-{name}.md")
    png = out.with_suffix(".png")
    plot(table, png)
    atomic_write_text(out, render(table, uri, png.name, benchmarks.get("sources") or {}))
    return f"wrote {out} and {png} ({len(table.rows)} point(s) of sweep {name})"
