from pathlib import Path

import pytest

from unetflow.config import ConfigError, load_config
from unetflow.tasks import TASKS

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.yaml")))
def test_shipped_experiments_load(name):
    cfg = load_config(EXPERIMENTS / name)
    assert cfg.model.task in TASKS and cfg.name == name[:-len(".yaml")]


def test_pairs_differ_only_in_task():
    import dataclasses
    for a, b in [("boundary_unet", "flow_unet"), ("tiny_boundary", "tiny_flow"), ("tiny_distance", "tiny_flow"),
                 ("dsb2018_boundary", "dsb2018_flow"), ("dsb2018_distance", "dsb2018_flow")]:
        ca, cb = load_config(EXPERIMENTS / f"{a}.yaml"), load_config(EXPERIMENTS / f"{b}.yaml")
        for section in ("data", "input", "augment", "train", "loss"):
            assert getattr(ca, section) == getattr(cb, section), (a, section)
        assert dataclasses.replace(ca.model, task="flow") == cb.model


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  task: flow\n  filters: 32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key `model.filters`"):
        load_config(f)
    f.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key `trian`"):
        load_config(f)


def test_bad_values_and_missing_file(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("model:\n  task: segmentation\n")
    with pytest.raises(ConfigError, match="model.task"):
        load_config(f)
    f.write_text("model:\n  task: flow\n  head_relu: true\n")
    with pytest.raises(ConfigError, match="linear"):
        load_config(f)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides():
    cfg = load_config(EXPERIMENTS / "flow_unet.yaml", ["train.epochs=2", "augment.scale_range=[0.8, 1.25]",
                                                       "postprocess.flow.cellprob_threshold=-0.5"])
    assert cfg.train.epochs == 2 and cfg.augment.scale_range == (0.8, 1.25)
    assert cfg.postprocess.flow.cellprob_threshold == -0.5
    with pytest.raises(ConfigError, match="unknown key `train.epoch`"):
        load_config(EXPERIMENTS / "flow_unet.yaml", ["train.epoch=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])


def test_train_splits_adds_val_images_to_training(tmp_path):
    from unetflow.train import resolve_data
    overrides = [f"data.root={tmp_path}", "data.synthetic_images=6"]
    plain = resolve_data(load_config(None, overrides)).splits
    final = resolve_data(load_config(None, overrides + ["data.train_splits=[train, val]"])).splits
    assert final["train"][2] == plain["train"][2] + plain["val"][2] and final["val"] == plain["val"]
    assert final["test"] == plain["test"]
    with pytest.raises(ConfigError, match="test split is never trained on"):
        load_config(None, ["data.train_splits=[train, test]"])
