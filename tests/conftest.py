"""Shared fixtures: a small shard set made by the real preprocessing code, and the local SLURM cluster."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `helpers`, whatever the import mode


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke experiment's generated dataset (8×8, 256 train / 64 val images, shards of 16)."""
    from pipeline.config import load_config
    from slurm.submit import prepare_data
    root = tmp_path_factory.mktemp("smoke_data")
    prepare_data(load_config("smoke", [f"data.root={root}"]))
    return root


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local SLURM cluster must answer (`dev/local-cluster.sh start`, which `make test` runs)."""
    out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert out.returncode == 0 and "UP" in out.stdout, (
        f"no SLURM controller answers ({out.stdout.strip()} {out.stderr.strip()}): "
        f"run `bash dev/local-cluster.sh start` first")


@pytest.fixture(scope="session")
def two_nodes(slurm_cluster) -> list:
    """The local cluster must have at least two usable nodes (`make cluster` starts two); their names."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    nodes = sorted({n for n, state in (l.split() for l in out.stdout.splitlines() if l.strip())
                    if state in ("idle", "mixed", "allocated", "completing")})  # "idle*": not responding
    assert len(nodes) >= 2, (
        f"the multi-node tests need a SLURM cluster of at least 2 usable nodes; sinfo says:\n{out.stdout}{out.stderr}"
        f"start one with `bash dev/local-cluster.sh start --nodes 2` (what `make cluster` runs)")
    return nodes


def pytest_collection_modifyitems(items) -> None:
    """Whatever uses the SLURM cluster is slow (`pytest -m "not slow"` leaves it out), marked or not."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, for the MLflow UI tests (tests/helpers/mlflow_ui.py drives it)."""
    from helpers import CHROMIUM  # tests/ is on sys.path only once this file has run (above)
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (install it with `apt-get install -y chromium`); "
                    "the MLflow UI browser test cannot run")
    return CHROMIUM
