"""The layering the README promises, read from the source: imports flow one way, `slurm` -> `pipeline` ->
`pipeline.models`, and `preprocessing` and `pipeline` share only the shard format (`shardformat`)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

from helpers import REPO

PROJECT = ("shardformat", "preprocessing", "pipeline", "slurm")
# What each part may import from the project (besides itself). `pipeline.models` sits below the rest of
# `pipeline`; its `__main__` is an entry point (nothing imports it) and reads experiment files.
ALLOWED = {
    "shardformat": set(),
    "preprocessing": {"shardformat"},
    "pipeline": {"shardformat", "pipeline.models"},
    "pipeline.models": set(),
    "slurm": {"shardformat", "preprocessing", "pipeline", "pipeline.models"},
}
ENTRY_POINTS = {"pipeline/models/__main__.py": {"pipeline"}}


def _part(module: str) -> str:
    return "pipeline.models" if module.startswith("pipeline.models") else module.split(".")[0]


def _imports(path: Path) -> Set[str]:
    """Project modules a file imports (absolute form), wherever in the file the import is."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
    return {m for m in found if m.split(".")[0] in PROJECT}


def test_imports_flow_one_way():
    wrong: Dict[str, Set[str]] = {}
    for top in PROJECT:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            here = _part(".".join(path.relative_to(REPO).with_suffix("").parts))
            allowed = ALLOWED[here] | {here} | ENTRY_POINTS.get(rel, set())
            bad = {m for m in _imports(path) if _part(m) not in allowed}
            if bad:
                wrong[rel] = bad
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_format_is_imported_by_both_sides():
    users = {top for top in ("preprocessing", "pipeline") for path in (REPO / top).rglob("*.py")
             if any(m == "shardformat" for m in _imports(path))}
    assert users == {"preprocessing", "pipeline"}


def test_loading_and_refusing_configs_imports_no_torch():
    code = ("import sys; import pipeline.config, pipeline.models, slurm.submit; "
            "pipeline.config.load_config('imagenet64_multiscale'); slurm.config.load_job_config('preprocess_imagenet'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
