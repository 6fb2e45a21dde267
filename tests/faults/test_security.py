"""Security basics: no pickle from a file a user may be handed is ever executed, the MLflow UI command we
print binds to 127.0.0.1, and nothing is handed to a shell as one string."""
from __future__ import annotations

import io
import pickle
import re
import shutil
import tarfile

import pytest
import torch
from helpers import REPO

from pipeline.data.plan import EvalPlan
from pipeline.data.shards import eval_batches, load_shard_set
from pipeline.data.stream import TrainStream, train_loader
from pipeline.train.weights import load_checkpoint_model


class Payload:
    """Unpickling this creates `marker` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_is_live(tmp_path):
    """Guard against a vacuous test: plain unpickling does run the payload."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


def test_malicious_pickle_in_exported_model_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    torch.save({"config": {"name": "row_lstm", "image_size": 8, "layers": 1, "hidden": 4},
                "state_dict": Payload(marker)}, bad)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint_model(bad)
    assert not marker.exists()


def _add_pickles(shard, marker):
    """Rewrite a shard with `.pickle` and `.pyd` members (webdataset's pickle decoder keys) per sample."""
    src = tarfile.open(shard)
    members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    src.close()
    payload = pickle.dumps(Payload(marker))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as out:
        keys = []
        for m, data in members:
            out.addfile(m, io.BytesIO(data))
            key = m.name.split(".", 1)[0]
            if key not in keys:
                keys.append(key)
                for ext in ("pickle", "pyd"):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    out.addfile(info, io.BytesIO(payload))


def test_shard_with_pickle_members_is_read_without_unpickling(smoke_data, tmp_path):
    """Every train and val sample carries .pickle/.pyd members; a full epoch through the training loader
    (2 worker processes, as train() reads) and the whole validation split are read; nothing is unpickled."""
    marker = tmp_path / "pwned"
    copy = tmp_path / "copy"
    shutil.copytree(smoke_data / "8", copy / "8")
    for shard in (copy / "8").glob("*.tar"):
        _add_pickles(shard, marker)
    train = load_shard_set(copy, 8, "train")
    stream = TrainStream(train, 8, 0, 0, 1, 2, 64)
    it = train_loader(stream)
    batches = [next(it) for _ in range(stream.batches_per_epoch)]
    assert len(batches) == stream.batches_per_epoch and batches[0].shape == (8, 3, 8, 8)
    val = load_shard_set(copy, 8, "val")
    spans = EvalPlan(tuple(n for _, n in val.shards), world=1, batch_size=16).spans(0)
    assert sum(b.shape[0] for b in eval_batches(val, spans, 16)) == val.num_samples
    assert not marker.exists()


def _python_files():
    for folder in ("pipeline", "preprocessing", "slurm", "bench", "tests"):
        yield from (REPO / folder).rglob("*.py")


def test_nothing_is_passed_to_a_shell_as_one_string():
    shell_true = re.compile(r"shell\s*=\s*True")
    os_shell = re.compile(r"\bos\.(system|popen)\s*\(|\bcommands\.getoutput|subprocess\.getoutput")
    hits = []
    for path in _python_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if path.name == "test_security.py" and "re.compile" in line:
                continue
            if shell_true.search(line) or os_shell.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert hits == []


def test_printed_mlflow_ui_command_binds_to_localhost():
    """Every `mlflow ui` / `mlflow server` command line in the code names --host 127.0.0.1 (the printed one
    is also checked end to end in tests/test_submit.py and served in tests/test_mlflow_ui.py)."""
    found = []
    for path in list(_python_files()) + [REPO / "README.md", REPO / "Makefile"]:
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"mlflow\"?,?\s*\"?(ui|server)\b", line) and "--backend-store-uri" in line:
                found.append((f"{path.relative_to(REPO)}:{n}", line))
    assert any(p.startswith("slurm/submit.py") for p, _ in found)
    assert [p for p, line in found if "--host" in line and "127.0.0.1" not in line] == []
    assert [p for p, line in found if "0.0.0.0" in line] == []
