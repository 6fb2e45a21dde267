"""Which YAML files make an experiment: `configs/experiments/<name>.yaml` and, through its `defaults:`, the
bases in `configs/base/` it inherits from (the paper's setting), most general first.

    config_layers(path) -> [(configs/base/paper.yaml, {...}), (configs/base/imagenet32.yaml, {...}), (path, {...})]

`pipeline.config.load_config` merges them into the typed schema, in that order, then the overrides.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = REPO_ROOT / "configs" / "experiments"
BASE_DIR = REPO_ROOT / "configs" / "base"    # what `defaults:` names resolve to


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key or path."""


def experiment_path(name_or_path: str) -> Path:
    """`smoke` -> configs/experiments/smoke.yaml; a path is taken as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"experiment file not found: {p}")
        return p
    p = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in EXPERIMENTS_DIR.glob("*.yaml"))
        near = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"unknown experiment '{name_or_path}'{hint} (known: {', '.join(known)})")
    return p


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys")
    return raw


def _default_path(name: Any, including: Path) -> Path:
    """A `defaults:` entry: a name in configs/base/ (`paper`), or a YAML path relative to the including file."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{including}: 'defaults' entries are names of files in {BASE_DIR}, got {name!r}")
    p = (including.parent / name) if name.endswith((".yaml", ".yml")) else BASE_DIR / f"{name}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in BASE_DIR.glob("*.yaml"))
        raise ConfigError(f"{including}: 'defaults' names {name!r}, but {p} does not exist (known: {', '.join(known)})")
    return p


def config_layers(path: Path, _chain: Tuple[Path, ...] = ()) -> List[Tuple[Path, Dict[str, Any]]]:
    """The files an experiment is made of, most general first: its `defaults:` (recursively, in the order
    listed), then itself. Each is (path, its keys without `defaults`)."""
    path = path.resolve()
    if path in _chain:
        raise ConfigError(f"{path}: 'defaults' form a cycle: {' -> '.join(str(p) for p in (*_chain, path))}")
    raw = _read_yaml(path)
    names = raw.pop("defaults", [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list):
        raise ConfigError(f"{path}: 'defaults' must be a list of base names, got {type(names).__name__}")
    layers: List[Tuple[Path, Dict[str, Any]]] = []
    for name in names:
        layers += config_layers(_default_path(name, path), (*_chain, path))
    return layers + [(path, raw)]


def list_experiments() -> List[Tuple[str, str]]:
    """(name, description) of every experiment in configs/experiments/."""
    return [(p.stem, str(_read_yaml(p).get("description", ""))) for p in sorted(EXPERIMENTS_DIR.glob("*.yaml"))]
