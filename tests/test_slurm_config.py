"""slurm/config.py: the launcher's sections of an experiment (`slurm:`, `preprocess:`) and its checks, composed
with the training schema; how training's loader treats those sections; preprocessing flags passed through."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

import preprocessing
from pipeline.config import ConfigError, ExperimentConfig, flatten, from_yaml_text, load_config, to_yaml
from slurm import preprocess_job, submit
from slurm.config import (ARRAY_ONLY, PREPROCESS_CHOICES, JobConfig, PreprocessConfig, SlurmConfig, build_kwargs,
                          load_job_config)


def _yaml(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text("data: {prepare: synthetic}\n" + text)
    return str(p)


def test_every_preprocess_field_is_a_build_argument_or_array_only():
    """A new preprocessing flag is a `preprocessing.build` argument plus a PreprocessConfig field: nothing
    else passes it on (BuildTask hands over `build_kwargs`), so the two must not drift apart."""
    params = set(inspect.signature(preprocessing.build).parameters)
    fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
    assert not fields - params - set(ARRAY_ONLY), "neither build arguments nor ARRAY_ONLY"
    assert set(ARRAY_ONLY) <= fields and not set(ARRAY_ONLY) & params  # array-only would silently drop an argument


def test_build_kwargs_are_the_fields_with_empty_paths_as_none():
    p = PreprocessConfig(source="/src", class_map="/map.mat", num_tasks=4, array_parallelism=2)
    kw = build_kwargs(p)
    assert set(kw) == {f.name for f in dataclasses.fields(p)} - set(ARRAY_ONLY)
    assert (kw["source"], kw["class_map"], kw["val_labels"], kw["num_tasks"]) == ("/src", "/map.mat", None, 4)
    assert kw["split"] == "train" and kw["sizes"] == [32, 64] and kw["overwrite"] is False
    inspect.signature(preprocessing.build).bind(**kw, task_id=3, progress=False)  # what BuildTask calls


def test_build_task_passes_the_config_to_preprocessing_build(monkeypatch):
    seen = {}
    monkeypatch.setattr(preprocessing, "build", lambda **kw: seen.update(kw) or {"ok": True})
    p = PreprocessConfig(source="/src", sizes=[8], num_tasks=3, workers=2, label_order="release")
    assert preprocess_job.BuildTask(p)(2) == {"ok": True}
    assert seen == {**build_kwargs(p), "task_id": 2, "progress": False}


def test_preprocess_choices_are_preprocessings_own():
    from preprocessing.imaging import RESIZE_METHODS
    from preprocessing.labels import LABEL_ORDERS
    assert PREPROCESS_CHOICES == {"preprocess.resize": RESIZE_METHODS, "preprocess.label_order": LABEL_ORDERS}


@pytest.mark.parametrize("slurm, per_node, ranks", [
    (dict(nodes=2, gpus_per_node=4), 4, 8),
    (dict(nodes=3, gpus_per_node=0), 1, 3),             # CPU-only nodes: one task each by default
    (dict(nodes=2, gpus_per_node=0, tasks_per_node=2), 2, 4),
    (dict(nodes=1, gpus_per_node=2, tasks_per_node=2), 2, 2),
])
def test_ranks_are_nodes_times_tasks_per_node(slurm, per_node, ranks):
    s = SlurmConfig(**slurm)
    assert (s.ranks_per_node(), s.ranks()) == (per_node, ranks)


def test_the_job_config_is_the_experiment_plus_the_launcher_sections():
    job = load_job_config("smoke", ["slurm.nodes=2", "train.global_batch_size=32"])
    assert isinstance(job, JobConfig) and isinstance(job, ExperimentConfig)
    assert (job.slurm.nodes, job.slurm.tasks_per_node, job.slurm.ranks()) == (2, 2, 4)
    trained = load_config("smoke", ["slurm.nodes=2", "train.global_batch_size=32"])
    assert type(trained) is ExperimentConfig and not hasattr(trained, "slurm") and not hasattr(trained, "preprocess")
    # MLflow params (flatten) as submitted: the experiment's, and the launch settings beside them
    assert {k: v for k, v in flatten(job).items() if not k.startswith(("slurm.", "preprocess."))} == flatten(trained)
    assert flatten(job)["slurm.nodes"] == 2 and flatten(job)["preprocess.num_tasks"] == 1


def test_a_saved_job_config_reads_back_as_either_schema():
    """runs/<name>/config.yaml of a submitted run has `slurm:`; pipeline/tools/run_figures.py reads it."""
    job = load_job_config("imagenet64_multiscale", ["slurm.nodes=8", "slurm.gpus_per_node=8"])
    text = to_yaml(job)
    assert flatten(from_yaml_text(text, JobConfig)) == flatten(job)
    trained = from_yaml_text(text)
    assert type(trained) is ExperimentConfig  # the job expects its GPUs: train.device auto became cuda
    assert flatten(trained) == flatten(load_config("imagenet64_multiscale", ["train.device=cuda"]))


@pytest.mark.parametrize("exp, overrides, trained, job", [
    ("imagenet64_multiscale", [], "auto", "cuda"),                           # 8 GPUs a node
    ("imagenet64_multiscale", ["slurm.gpus_per_node=0", "slurm.tasks_per_node=2"], "auto", "cpu"),  # CPU nodes
    ("smoke", [], "cpu", "cpu"),
    ("smoke", ["train.device=auto", "slurm.gpus_per_node=1", "slurm.tasks_per_node=0"], "auto", "cuda"),
])
def test_the_job_device_is_what_the_launch_layout_asks_for(exp, overrides, trained, job):
    """A job with GPUs expects CUDA (and refuses to start without it: tests/test_distributed.py), whatever
    `train.device: auto` would have found; under torchrun the experiment keeps its own setting."""
    assert (load_config(exp, overrides).train.device, load_job_config(exp, overrides).train.device) == (trained, job)


def test_fp16_on_cpu_only_nodes_is_refused_at_load():
    with pytest.raises(ConfigError, match="'train.precision' fp16 needs a GPU"):
        load_job_config("imagenet64_multiscale", ["slurm.gpus_per_node=0", "train.precision=fp16"])


def test_training_drops_the_launcher_sections_unread_and_the_launcher_checks_them(tmp_path):
    exp = _yaml(tmp_path, "slurm:\n  nodez: 2\n")
    assert load_config(exp).name == "exp"
    with pytest.raises(ConfigError, match="unknown config key 'slurm.nodez'; did you mean 'slurm.nodes'"):
        load_job_config(exp)
    assert load_config("smoke", ["slurm.nodes=abc", "preprocess.sizes=x"]).name == "smoke"
    with pytest.raises(ConfigError, match="bad value for 'slurm.nodes'"):
        load_job_config("smoke", ["slurm.nodes=abc"])
    with pytest.raises(ConfigError, match="bad value for 'slurm'"):
        load_job_config(_yaml(tmp_path, "slurm: 3\n"))
    for typo in ("slurmm:\n  nodes: 2\n", "preprocesss: {}\n"):  # only the declared names are dropped
        with pytest.raises(ConfigError, match=f"unknown config key '{typo.split(':')[0]}'"):
            load_config(_yaml(tmp_path, typo))


def test_a_preprocessing_experiment_is_refused_for_training():
    with pytest.raises(ConfigError, match=r"^'preprocess_imagenet' is a preprocessing experiment \(kind: preprocess\)"
                                          r".*submit it with `python slurm/submit.py --exp preprocess_imagenet`$"):
        load_config("preprocess_imagenet")
    job = load_job_config("preprocess_imagenet")
    assert job.kind == "preprocess" and job.preprocess.num_tasks == 16


@pytest.mark.parametrize("overrides, message", [
    (["slurm.nodes=0"], "'slurm.nodes' must be at least 1, got 0"),
    (["slurm.gpus_per_node=2", "slurm.tasks_per_node=4"],
     "'slurm.tasks_per_node' (4) differs from 'slurm.gpus_per_node' (2): training runs one task per GPU"),
    # smoke says train.device: cpu; asking it for GPUs is a contradiction, not a silent CPU run
    (["slurm.gpus_per_node=1", "slurm.tasks_per_node=0"],
     "'train.device' is cpu but 'slurm.gpus_per_node' is 1: the GPUs would sit idle"),
    (["train.device=cuda"], "'train.device' is cuda but 'slurm.gpus_per_node' is 0: the job would get no GPU"),
    (["slurm.cpus_per_task=0"], "'slurm.cpus_per_task' must be at least 1, got 0"),
    (["slurm.timeout_min=0"], "'slurm.timeout_min' must be at least 1, got 0"),
    (["slurm.mem_gb=-1"], "'slurm.mem_gb' must be 0 or more, got -1"),
    (["slurm.gpus_per_node=-8"], "'slurm.gpus_per_node' must be 0 or more, got -8"),
    (["slurm.timeout_min=1", "slurm.signal_delay_s=60"],
     "'slurm.signal_delay_s' (60 s) is not shorter than the time limit 'slurm.timeout_min' (1 min)"),
])
def test_a_job_layout_that_cannot_run_is_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_job_config("smoke", overrides)
    assert load_config("smoke", overrides).name == "smoke"  # training never looks at the launch settings


def test_submit_refuses_tasks_per_node_against_gpus_in_one_line(monkeypatch, capsys):
    """Defect: the check was made while building the executor, so a real submission (not --dry-run) ended
    in a traceback. Now it is a load-time refusal like every other: `error: ...`, exit 2, nothing submitted."""
    def must_not_submit(*args, **kwargs):
        raise AssertionError("submitted")
    monkeypatch.setattr(submit, "slurm_available", lambda: False)
    monkeypatch.setattr(submit, "submit_training", must_not_submit)
    monkeypatch.setattr(submit, "prepare_data", must_not_submit)
    rc = submit.main(["--exp", "smoke", "--local", "--gpus-per-node", "2", "slurm.tasks_per_node=4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: 'slurm.tasks_per_node' (4) differs from 'slurm.gpus_per_node' (2)")

