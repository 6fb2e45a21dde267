"""Run every CPU benchmark as a subprocess, print a summary table, write bench/results.json.

    python bench/run_all.py            # the full suite (under 10 minutes on 2 idle cores)
    python bench/run_all.py --quick    # a fast pass (every benchmark's --quick)
    python bench/run_all.py --only input engine

Each benchmark prints its figures and, last, its headline ratio as `<what>: <value> (target >= X) MET`;
bench_preprocess.py prints two ratio lines (`...: 2.31x (target >= 2x)`). Every output line that names a
target is collected. A benchmark that is missing (bench_model_step.py and bench_sampling.py belong to
the models engineer) is skipped with a line saying so; one that fails or times out is recorded with its
exit status and the end of its output, and the others still run. results.json is written atomically
(temporary file + rename).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pipeline.fsutil import atomic_write_text  # noqa: E402

# (key, script, extra args for the full run, extra args for --quick, timeout of the full run in s)
BENCHES = [
    ("preprocess", "bench_preprocess.py", [], ["--images", "60", "--repeats", "2"], 240),
    ("input", "bench_input.py", [], ["--quick"], 240),
    ("skip", "bench_skip.py", [], ["--quick"], 120),
    ("model_step", "bench_model_step.py", [], ["--quick"], 420),
    ("scan_vs_reference", "bench_model_step.py", ["--vs-reference"], ["--vs-reference", "--quick"], 600),
    ("ops", "bench_ops.py", [], ["--quick"], 300),
    ("engine", "bench_engine.py", [], ["--quick"], 300),
    ("sampling", "bench_sampling.py", [], ["--quick"], 420),
    ("scaling", "bench_scaling.py", [], ["--quick"], 600),
    ("compress", "bench_compress.py", [], ["--quick"], 300),
]
# `name: 0.93 (target >= 0.8) MET`, `name: 2.31x (target >= 2x)`, `x: 1.05x (target <= 1.15x) NOT MET`
TARGET_LINE = re.compile(
    r"^(?P<name>.*?):\s*(?P<value>[-+0-9.eE]+)\s*x?\s*\(target\s*(?P<op>>=|<=|≥|≤)\s*(?P<target>[0-9.]+)\s*x?\)")


def parse_targets(text: str):
    found = []
    for line in text.splitlines():
        m = TARGET_LINE.match(line.strip())
        if not m:
            continue
        value, target = float(m["value"]), float(m["target"])
        higher = m["op"] in (">=", "≥")
        found.append({"name": m["name"].strip(), "value": value, "target": target,
                      "op": ">=" if higher else "<=",
                      "met": value >= target if higher else value <= target, "line": line.strip()})
    return found


def last_lines(text: str, n: int = 6):
    lines = [l for l in text.splitlines() if l.strip() and "Warning" not in l and not l.startswith("[20")]
    return lines[-n:]


def run_one(key: str, script: str, extra, timeout: float) -> dict:
    path = HERE / script
    if not path.exists():
        print(f"--- {key}: SKIPPED ({script} does not exist yet)", flush=True)
        return {"status": "missing", "script": script}
    cmd = [sys.executable, str(path), *extra]
    print(f"--- {key}: {' '.join([Path(sys.executable).name, 'bench/' + script, *extra])}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = out.stdout + "\n" + out.stderr, out.returncode
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired as e:
        def s(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        text, rc, status = s(e.stdout) + "\n" + s(e.stderr), None, "timeout"
    wall = time.perf_counter() - t
    stdout_lines = [l for l in text.splitlines() if l.strip()]
    targets = parse_targets(text)
    if status == "ok" and not targets:
        status = "no-ratio"
    for l in (last_lines(text) if status == "ok" else last_lines(text, 15)):
        print(f"    {l}")
    print(f"    [{status}, {wall:.0f}s]", flush=True)
    return {"status": status, "rc": rc, "wall_s": round(wall, 1), "command": " ".join(["python", "bench/" + script, *extra]),
            "targets": targets, "last_lines": last_lines(text, 15), "output_lines": len(stdout_lines)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark's fast pass")
    ap.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHES], help="run only these")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {}
    for key, script, full, quick, timeout in BENCHES:
        if args.only and key not in args.only:
            continue
        results[key] = run_one(key, script, quick if args.quick else full, timeout)

    print("\n| benchmark | figure | value | target | verdict |")
    print("|---|---|---|---|---|")
    for key, r in results.items():
        if not r.get("targets"):
            print(f"| {key} | — | — | — | {r['status'].upper()} |")
            continue
        for t in r["targets"]:
            print(f"| {key} | {t['name']} | {t['value']:.3g} | {t['op']} {t['target']:g} | "
                  f"{'met' if t['met'] else 'NOT MET'} |")
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f}s; written {args.out}")
    atomic_write_text(args.out, json.dumps({
        "quick": args.quick, "total_s": round(total, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()[0]},
        "benchmarks": results}, indent=2) + "\n")
    return 0 if all(r["status"] in ("ok", "missing") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
