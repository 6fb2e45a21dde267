"""Bits/dim report: our best runs per model beside the published numbers, from the MLflow store.

    python -m pipeline.tracking.report [--experiment imagenet32] [--tracking-uri URI] [--out report.md]
    python -m pipeline.tracking.report --sweep NAME     # one sweep's table instead: sweep_report.py

For each MLflow experiment (one per benchmark) it writes a Markdown table of the best run per model (the
run's latest `val_bits_per_dim`, train bits/dim, steps, images/s, device-hours), the published test
bits/dim of `configs/benchmarks.yaml` and the gap to each, and a PNG (`<out stem>-<experiment>.png`) of
validation bits/dim against step and against device-hours. Runs are grouped by the tags that decide
comparability (dataset_variant, resize, image_size, manifest_sha256) and ranked only within a group;
the report says so whenever an experiment holds runs on differently made data. The report and the plots
are then logged as artifacts of a `report` run in the same experiment (tag `run_kind=report`), which
later reports skip.

Exit status: 0 when a report was written, and also when there is nothing to report (no store, or no
training run with a validation result: a message says so and nothing is written); 2 for an unknown
experiment name or a benchmarks file that cannot be read.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import mlflow
from mlflow.entities import RunStatus

from pipeline.fsutil import atomic_write_text
from pipeline.tracking import sweep_report
from pipeline.tracking.reading import BENCHMARKS_FILE, VAL, ReportError, RunSummary, load_benchmarks, summarise
from pipeline.tracking.report_plots import plot_runs
from pipeline.tracking.tracker import DEFAULT_URI, REPORT_KIND, RUN_KIND_TAG, SWEEP_KIND, resolve_uri, store_missing

EXIT_OK, EXIT_USAGE = 0, 2


@dataclass(frozen=True)
class Unit:
    """What a benchmark compares: our runs' metric, the published results' key, and its name."""
    val: str = VAL
    published: str = "test_bits_per_dim"
    label: str = "bits/dim"


# A benchmark's `unit:`; binarized MNIST is published in nats per image (the paper's Table 4), which the
# trainer logs beside bits/dim as val_nats_per_image (bits/dim * sub-pixels * ln 2).
UNITS = {"bits_per_dim": Unit(), "nats_per_image": Unit("val_nats_per_image", "test_nats_per_image", "nats/image")}


def unit_of(bench: Optional[dict]) -> Unit:
    """The unit a benchmark (or no benchmark: bits/dim) is compared in; an unknown one is refused."""
    name = (bench or {}).get("unit", "bits_per_dim")
    if name not in UNITS:
        raise ReportError(f"benchmark unit {name!r} is not one of {sorted(UNITS)}")
    return UNITS[name]


@dataclass
class ExperimentReport:
    name: str
    experiment_id: str
    runs: List[RunSummary]               # training runs with a validation result
    without_val: int = 0                 # training runs that have not evaluated yet
    skipped_reports: int = 0             # earlier report runs, not counted

    def groups(self) -> Dict[Tuple[str, ...], List[RunSummary]]:
        out: Dict[Tuple[str, ...], List[RunSummary]] = {}
        for r in sorted(self.runs, key=lambda r: r.val):
            out.setdefault(r.data_key, []).append(r)
        return out


def best_per_model(runs: Sequence[RunSummary]) -> List[RunSummary]:
    """The lowest latest-val run of each model, best first."""
    best: Dict[str, RunSummary] = {}
    for r in runs:
        if r.model not in best or r.val < best[r.model].val:
            best[r.model] = r
    return sorted(best.values(), key=lambda r: r.val)


# ----------------------------------------------------------------------------------------------- reading

def benchmark_for(experiment: str, benchmarks: dict) -> Optional[dict]:
    for key, b in benchmarks["benchmarks"].items():
        if experiment == key or experiment in (b.get("experiments") or []):
            return b
    return None


def collect(client, experiment, unit: Unit = Unit()) -> ExperimentReport:
    """Every active run of the experiment, summarised (val: the unit's metric); report runs left out."""
    rep = ExperimentReport(experiment.name, experiment.experiment_id, [])
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        for run in page:
            kind = run.data.tags.get(RUN_KIND_TAG)
            if kind in (REPORT_KIND, SWEEP_KIND):  # reports and sweeps' parent runs train nothing
                rep.skipped_reports += kind == REPORT_KIND
                continue
            if unit.val not in run.data.metrics:
                rep.without_val += 1
                continue
            rep.runs.append(summarise(client, run, unit.val))
        token = page.token
        if not token:
            return rep


# ----------------------------------------------------------------------------------------------- writing

def _f(x: Optional[float], fmt: str = ".4f") -> str:
    return "–" if x is None else format(x, fmt)


def _gap(ours: float, published: float, comparable: bool) -> str:
    return f"{ours - published:+.3f}" + ("" if comparable else " †")


def _data_label(key: Tuple[str, ...]) -> str:
    variant, resize, size, sha = key
    return f"variant `{variant}`, resize `{resize}`, {size} px, manifest `{sha[:12]}`"


def render_experiment(rep: ExperimentReport, bench: Optional[dict], sources: dict,
                      plot_name: Optional[str]) -> str:
    unit = unit_of(bench)
    key_, label = unit.published, unit.label
    lines = [f"## Experiment `{rep.name}`" + (f" — {bench['title']}" if bench and bench.get("title") else ""), ""]
    extra = []
    if rep.without_val:
        extra.append(f"{rep.without_val} run(s) without a validation result yet are not listed")
    if rep.skipped_reports:
        extra.append(f"{rep.skipped_reports} earlier report run(s) skipped")
    lines += [f"{len(rep.runs)} training run(s) with a validation result"
              + (f" ({'; '.join(extra)})" if extra else "") + ".", ""]
    groups = rep.groups()
    if len(groups) > 1:
        lines += [f"> **Warning: runs on differently made data.** The runs of this experiment fall into "
                  f"{len(groups)} data groups (dataset variant, resize method, image size or manifest hash "
                  f"differ). They are ranked only within a group: results from different groups are not "
                  f"comparable with each other.", ""]
    published = list((bench or {}).get("results") or [])
    if not bench:
        lines += [f"No published results for benchmark `{rep.name}` in configs/benchmarks.yaml: "
                  f"our runs only.", ""]
    for gi, (key, runs) in enumerate(groups.items(), 1):
        best = best_per_model(runs)
        lines += [f"### Data group {gi}: {_data_label(key)}", ""]
        comparable = bool(bench) and key[0] == bench.get("dataset_variant") and key[2] == str(bench.get("image_size"))
        if bench and not comparable:
            lines += [f"> † Published numbers were measured on `{bench.get('dataset_variant')}` data at "
                      f"{bench.get('image_size')} px; these runs used variant `{key[0]}` at {key[2]} px, so the "
                      f"gaps are not strictly comparable." + (f" {bench['note']}" if bench.get("note") else ""), ""]
        lines += [f"Best run per model ({len(runs)} run(s) in this group); val = latest `{unit.val}`:", "",
                  f"| # | model | run | val {label} | train bits/dim | steps | images/s | device-hours | status "
                  "| published (same model) | gap |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(best, 1):
            same = [p for p in published if p.get("model") == r.model]
            pub = "; ".join(f"{p[key_]:.2f} ({p['source']})" for p in same) or "–"
            gap = "; ".join(_gap(r.val, p[key_], comparable) for p in same) or "–"
            lines.append(f"| {i} | {r.model} | {r.name} | {r.val:.4f} | {_f(r.train)} | {r.steps} | "
                         f"{_f(r.images_per_s, '.1f')} | {_f(r.device_hours, '.4g')} | {r.status} | {pub} | {gap} |")
        lines.append("")
        if published:
            lines += ["Gap to each published result (our val − published test; negative is better):", "",
                      f"| published | test {label} | source | " + " | ".join(r.name for r in best) + " |",
                      "|---|---|---|" + "---|" * len(best)]
            for p in sorted(published, key=lambda p: -p[key_]):
                lines.append(f"| {p['label']} | {p[key_]:.2f} | {p['source']} | "
                             + " | ".join(_gap(r.val, p[key_], comparable) for r in best) + " |")
            lines.append("")
    if plot_name:
        lines += [f"![validation {label} of {rep.name}]({plot_name})", ""]
    used = sorted({p["source"] for p in published})
    if used:
        lines += ["Sources:", ""] + [f"- `{s}`: {sources.get(s, {}).get('citation', s)} "
                                     f"{sources.get(s, {}).get('url', '')}".rstrip() for s in used] + [""]
    return "\n".join(lines)


def log_report_run(client, rep: ExperimentReport, files: Sequence[Path]) -> str:
    """A run of its own in the experiment, tagged so nobody (and no later report) takes it for training."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = client.create_run(rep.experiment_id, run_name=f"report-{stamp}", tags={
        RUN_KIND_TAG: REPORT_KIND,
        "mlflow.note.content": "Benchmark report (python -m pipeline.tracking.report), not a training run.",
        "report.runs": str(len(rep.runs)), "report.data_groups": str(len(rep.groups()))})
    for f in files:
        client.log_artifact(run.info.run_id, str(f), "report")
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run.info.run_id


def make_report(tracking_uri: str, experiments: Optional[List[str]], out: Path,
                benchmarks_file: Path = BENCHMARKS_FILE, log_run: bool = True) -> Tuple[int, str]:
    """Write the report; returns (exit status, message). Raises ReportError for unusable requests."""
    benchmarks = load_benchmarks(benchmarks_file)
    if store_missing(tracking_uri):
        return EXIT_OK, f"No MLflow store at {tracking_uri}: no runs to report."
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if experiments:
        exps = []
        for name in experiments:
            e = client.get_experiment_by_name(name)
            if e is None:
                known = sorted(x.name for x in client.search_experiments())
                raise ReportError(f"no experiment '{name}' in {tracking_uri} (known: {', '.join(known) or 'none'})")
            exps.append(e)
    else:
        exps = sorted(client.search_experiments(), key=lambda e: e.name)
    reports = [r for r in (collect(client, e, unit_of(benchmark_for(e.name, benchmarks))) for e in exps) if r.runs]
    names = ", ".join(e.name for e in exps) or "(none)"
    if not reports:
        return EXIT_OK, (f"No training runs with {VAL} in experiment(s) {names} of {tracking_uri}: "
                         f"nothing to report (no file written).")
    out = Path(out)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["# Bits/dim benchmark report", "",
             f"Generated {stamp} from `{tracking_uri}` by `python -m pipeline.tracking.report`. Lower is better. Ours: "
             f"the latest `{VAL}` of each run (its data.val_split; `val_nats_per_image` where a benchmark is "
             f"published in nats per image, as binarized MNIST); published: test bits/dim (or nats) from "
             f"configs/benchmarks.yaml. Runs are ranked only against runs on the same data (same dataset "
             f"variant, resize method, image size and manifest hash).", ""]
    plots: Dict[str, Path] = {}
    for rep in reports:
        bench = benchmark_for(rep.name, benchmarks)
        plot = out.with_name(f"{out.stem}-{rep.name}.png")
        shown = [r for runs in rep.groups().values() for r in best_per_model(runs)]
        unit = unit_of(bench)
        plot_runs(shown, list((bench or {}).get("results") or []), f"{rep.name}: validation {unit.label}", plot,
                  unit.published, f"validation {unit.label}")
        plots[rep.name] = plot
        parts.append(render_experiment(rep, bench, benchmarks.get("sources") or {}, plot.name))
    atomic_write_text(out, "\n".join(parts))
    logged = []
    if log_run:
        for rep in reports:
            logged.append(log_report_run(client, rep, [out, plots[rep.name]]))
    msg = f"wrote {out} and {', '.join(str(p) for p in plots.values())}"
    if logged:
        msg += f"; logged as report run(s) {', '.join(logged)}"
    return EXIT_OK, msg


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser("pipeline.tracking.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", action="append", help="MLflow experiment (benchmark) to report on; "
                   "repeatable; default: every experiment in the store")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store; default $MLFLOW_TRACKING_URI, else {DEFAULT_URI}")
    p.add_argument("--out", default=None, help="Markdown report (default report.md, or sweep-NAME.md with "
                   "--sweep); plots go beside it")
    p.add_argument("--benchmarks", default=str(BENCHMARKS_FILE), help="published results (YAML)")
    p.add_argument("--no-log-run", action="store_true", help="do not log the report as an MLflow run")
    p.add_argument("--sweep", help="the table of one sweep instead (pipeline/tracking/sweep_report.py)")
    args = p.parse_args(argv)
    uri = resolve_uri(args.tracking_uri)
    try:
        if args.sweep:
            print(sweep_report.make_sweep_report(uri, args.sweep, args.out and Path(args.out),
                                                 load_benchmarks(Path(args.benchmarks))))
            return EXIT_OK
        code, msg = make_report(uri, args.experiment, Path(args.out or "report.md"), Path(args.benchmarks),
                                not args.no_log_run)
    except ReportError as e:
        print(f"pipeline.tracking.report: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(msg)
    return code


if __name__ == "__main__":
    sys.exit(main())
