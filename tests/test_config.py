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
                 ("dsb2018_boundary", "dsb2018_flow"), ("dsb2018_distance", "dsb2018_flow"),
                 ("aitslab_nuclei_boundary", "aitslab_nuclei_flow"), ("aitslab_nuclei_distance", "aitslab_nuclei_flow"),
                 ("aitslab_cells_boundary", "aitslab_cells_flow"), ("aitslab_cells_distance", "aitslab_cells_flow")]:
        ca, cb = load_config(EXPERIMENTS / f"{a}.yaml"), load_config(EXPERIMENTS / f"{b}.yaml")
        for section in ("data", "input", "augment", "train", "loss"):
            assert getattr(ca, section) == getattr(cb, section), (a, section)
        assert dataclasses.replace(ca.model, task="flow") == cb.model


def test_lab_configs_name_their_channels_and_fine_tune_from_the_ready_model():
    cells = load_config(EXPERIMENTS / "aitslab_cells_flow.yaml")
    assert cells.input.channel_names == ("cytoplasm", "nuclei") and not cells.input.grey
    assert cells.augment.target_diameter == 30  # Cellpose's cell size
    tuned = load_config(EXPERIMENTS / "aitslab_cells_flow_finetune.yaml")
    assert tuned.train.init_from == "nuclei" and tuned.train.init_channels == ("zero", 0)
    import dataclasses
    assert dataclasses.replace(tuned.train, init_from=None, init_channels=None,
                               learning_rate=cells.train.learning_rate) == cells.train
    nuclei = load_config(EXPERIMENTS / "aitslab_nuclei_flow_finetune.yaml")
    assert nuclei.train.init_from == "nuclei" and nuclei.input.channels == 1


def test_base_config_is_the_start_and_the_file_wins(tmp_path):
    (tmp_path / "common.yaml").write_text("name: common\ntrain:\n  epochs: 7\n  batch_size: 4\nmodel:\n  depth: 3\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../common.yaml\nname: child\ntrain:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["train.seed=3"])
    assert (cfg.name, cfg.train.epochs, cfg.train.batch_size, cfg.model.depth, cfg.train.seed) == ("child", 2, 4, 3, 3)
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere.yaml.*the base of .*orphan.yaml"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "typo.yaml").write_text("base: common.yaml\ntrain:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match="unknown key `train.epoch`"):
        load_config(tmp_path / "typo.yaml")


def test_init_channels_needs_init_from():
    with pytest.raises(ConfigError, match="init_channels.*needs train.init_from"):
        load_config(None, ["train.init_channels=[zero, 0]"])


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
    f.write_text("model:\n  task: flow\n  boundary:\n    head_relu: true\n")
    with pytest.raises(ConfigError, match="model.boundary sets head options of the boundary model, not of task 'flow'"):
        load_config(f)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_configs_with_flat_loss_and_head_options_still_load(tmp_path):
    """Runs saved when the loss and head options were flat (``loss.flow_weight``, ``model.head_relu``)
    load with each option in the section of every task that has it."""
    f = tmp_path / "old.yaml"
    f.write_text("model:\n  task: boundary\n  head_relu: true\n"
                 "loss:\n  class_weights: [1, 2, 5]\n  flow_weight: 2.0\n  prob_weight: 0.5\n  distance_weight: 3.0\n")
    cfg = load_config(f)
    assert cfg.model.boundary.head_relu and cfg.loss.boundary.class_weights == (1, 2, 5)
    assert (cfg.loss.flow.flow_weight, cfg.loss.flow.prob_weight) == (2.0, 0.5)
    assert (cfg.loss.distance.distance_weight, cfg.loss.distance.prob_weight) == (3.0, 0.5)
    assert cfg.loss.flow3d.flow_weight == 2.0
    # a section's own value wins over the flat one; an unknown flat key is still an error
    assert load_config(f, ["loss.flow.flow_weight=4"]).loss.flow.flow_weight == 4
    with pytest.raises(ConfigError, match="unknown key `loss.flow_wieght`"):
        load_config(None, ["loss.flow_wieght=2"])


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
