"""The layering the README promises, read from the source: imports flow one way, `slurm` -> `pipeline` ->
`pipeline.models`, and `preprocessing` and `pipeline` share only the shard format (`shardformat`)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> Dict[str, Set[str]]:
    """Project module -> the project modules it imports (anywhere in the file). `from pkg import name`
    counts as importing the module pkg.name where that is a module, else pkg itself."""
    modules = {_module_name(p): p for top in PROJECT for p in (REPO / top).rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        graph[name] = {m for m in edges if m in modules and m != name}
    return graph


def _room(module: str) -> str:
    """The room a module lives in: `pipeline.<subpackage>`, a top-level pipeline module, or a package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else parts[0]


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every cycle graphlib finds, one at a time (each found cycle's first edge is removed and the search
    repeated, so one test run names them all)."""
    from graphlib import CycleError, TopologicalSorter
    graph = {k: set(v) for k, v in graph.items()}
    found = []
    while True:
        try:
            tuple(TopologicalSorter(graph).static_order())
            return found
        except CycleError as e:
            cycle = e.args[1]
            found.append(cycle)
            graph[cycle[1]].discard(cycle[0])  # static_order reports the cycle backwards: [a, b, ..., a]


def test_no_import_cycles_between_modules():
    assert not _cycles(_import_graph()), "modules that import each other (directly or through others)"


def test_no_import_cycles_between_rooms():
    rooms: Dict[str, Set[str]] = {}
    for module, targets in _import_graph().items():
        if module.endswith(".__main__"):  # an entry point: nothing imports it, so it closes no cycle
            continue
        here = _room(module)
        rooms.setdefault(here, set()).update(_room(t) for t in targets if _room(t) != here)
    assert not _cycles(rooms), "rooms (pipeline subpackages, top-level packages) that import each other"


def test_the_cycle_finder_finds_a_cycle():
    """The two tests above are only as good as `_cycles`: a planted cycle must be found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert not _cycles({"a": {"b"}, "b": {"c"}, "c": set()})


def test_function_local_imports_say_why():
    """An import inside a function hides a dependency from the reader: it is there only to keep a heavy or
    order-dependent import (torch, deepspeed after DS_ACCELERATOR, mlflow, matplotlib) out of a path that
    must stay light, and a comment on its line (or the line above) says which."""
    silent = []
    for top in PROJECT:
        for path in sorted((REPO / top).rglob("*.py")):
            lines = path.read_text().splitlines()
            for fn in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                        if "#" not in here and not above.startswith("#"):
                            silent.append(f"{path.relative_to(REPO)}:{node.lineno}: {here.strip()}")
    assert not silent, "function-local imports without a reason:\n" + "\n".join(sorted(set(silent)))
