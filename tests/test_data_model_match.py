"""Issue 22: the trainer refuses a model whose channels or levels differ from the train shards' (one line,
naming both and the fix) before DeepSpeed starts; a manifest without the keys holds RGB 256-level images."""
from __future__ import annotations

import pytest

from pipeline.models import make_config
from pipeline.train.trainer import check_data_matches_model


@pytest.mark.parametrize("model,manifest,message", [
    (dict(channels=3), {"channels": 1}, "model.channels is 3 but the shards in D hold 1-channel images: "
                                        "set model.channels=1"),
    (dict(channels=1), {}, "model.channels is 1 but the shards in D hold 3-channel images: set model.channels=3"),
    (dict(channels=1), {"channels": 1, "levels": 2}, "model.levels is 256 but the shards in D hold images of "
                                                     "2 levels: set model.levels=2"),
])
def test_a_model_other_than_the_data_is_refused_in_one_line(model, manifest, message):
    with pytest.raises(ValueError) as e:
        check_data_matches_model(make_config("pixelcnn", **model), manifest, "D")
    assert str(e.value) == message


@pytest.mark.parametrize("model,manifest", [({}, {}), ({}, {"channels": 3, "levels": 256}),
                                            (dict(channels=1, levels=2), {"channels": 1, "levels": 2})])
def test_a_matching_model_passes(model, manifest):
    check_data_matches_model(make_config("row_lstm", **model), manifest, "D")


def test_the_trainer_refuses_before_deepspeed_starts(smoke_data, tmp_path, monkeypatch):
    """Trainer.setup on the smoke shards (RGB) with a grayscale model stops after loading the shard sets."""
    from pipeline.config import load_config
    from pipeline.train.trainer import Trainer
    monkeypatch.setattr("pipeline.train.trainer.init_distributed", lambda *a: None)
    cfg = load_config("smoke", [f"data.root={smoke_data}", "model.channels=1", f"output_dir={tmp_path}"])
    trainer = Trainer(cfg)
    with pytest.raises(ValueError, match=r"^model.channels is 1 but the shards in .* hold 3-channel images: "
                                         r"set model.channels=3$"):
        trainer.setup()
    assert trainer.tracker is None and not hasattr(trainer, "engine")


def test_a_checkpoint_saved_before_channels_and_levels_existed_still_resumes(tmp_path):
    """Its saved model config lacks the two keys: it was an RGB 256-level model, and is compatible with one."""
    import dataclasses

    from pipeline.train.checkpoint import CheckpointError, check_compatible
    now = dataclasses.asdict(make_config("row_lstm"))
    old = {k: v for k, v in now.items() if k not in ("channels", "levels")}
    check_compatible({"model": old}, now, tmp_path)
    with pytest.raises(CheckpointError, match="differs in channels"):
        check_compatible({"model": old}, {**now, "channels": 1}, tmp_path)
