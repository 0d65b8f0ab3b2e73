"""Every representation through one interface: targets, augmentation, heads, un-flipping, labels."""
import numpy as np
import pytest

from unetflow.augment import AugmentConfig, apply_transform, random_transform
from unetflow.conventions import FLOW_SCALE
from unetflow.metrics import matching
from unetflow.precompute import TargetParams
from unetflow.synthetic import synthetic_nuclei
from unetflow.tasks import TASKS, array_kinds, get_task

#: The tasks of 2-D images; the 3-D flow task is tested on volumes (tests/test_volume.py).
IMAGE_TASKS = sorted(name for name, task in TASKS.items() if task.spatial_dims == 2)
from unetflow.distance import DISTANCE_SCALE, labels_to_distance


def _labels():
    return synthetic_nuclei(np.random.default_rng(3), (64, 64))[1]


def _crop(task, labels):
    """The task's cached arrays of `labels`, laid out as in a training crop (vectors channels-last)."""
    arrays = task.make_targets(labels, TargetParams())
    return {k: (np.moveaxis(a, 0, -1) if task.kinds[k] == "vector" else a) for k, a in arrays.items()}


def _ideal_outputs(task, labels):
    """What a perfect network would output, in the task's blending form."""
    t = task.target(_crop(task, labels))
    if task.name == "boundary":
        return t  # one-hot = probabilities
    scale = DISTANCE_SCALE if task.name == "distance" else FLOW_SCALE
    return np.concatenate([scale * t[..., :-1], np.where(t[..., -1:] > 0.5, 10.0, -10.0)], -1)


def test_registry_and_unknown_names():
    assert set(TASKS) == {"boundary", "flow", "distance", "flow3d"}
    assert get_task("flow") is TASKS["flow"] and get_task(TASKS["flow"]) is TASKS["flow"]
    with pytest.raises(ValueError, match="unknown task 'segment'.*boundary, distance, flow"):
        get_task("segment")
    kinds = array_kinds()
    assert kinds["flows"] == "vector" and kinds["distance"] == "linear" and kinds["boundary"] == "nearest"


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_targets_have_the_task_channels_and_labels_come_back(name):
    task, labels = TASKS[name], _labels()
    assert set(task.make_targets(labels, TargetParams())) == set(task.kinds)
    target = task.target(_crop(task, labels))
    assert target.shape == labels.shape + (task.channels,) and target.dtype == np.float32
    # a perfect network's outputs give the objects back through the task's default post-processing
    raw = _ideal_outputs(task, labels)
    config = task.postprocess_class()
    if name == "flow":
        config = config.with_overrides(follow="cellprob", interp=True)
    m = matching(labels, task.to_labels(raw, config), thresh=0.75)
    assert m.f1 > 0.95, (name, m)


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_unflip_inverts_a_flip_of_the_image(name):
    """The outputs of a flipped image, un-flipped, are the outputs of the image (flows: sign too)."""
    task = TASKS[name]
    labels = np.zeros((40, 50), np.int32)
    labels[5:18, 7:30] = 1  # odd-sized boxes and an ellipse-free layout: a unique centre per object
    labels[21:36, 31:46] = 2
    labels[23:30, 5:16] = 3
    plain = task.target(_crop(task, labels))
    # at each box's centre (the heat source) the gradient is zero up to rounding: no direction
    centres = (np.array([11, 28, 26]), np.array([18, 38, 10]))
    for fy, fx in [(True, False), (False, True), (True, True)]:
        flipped = labels[::-1] if fy else labels
        flipped = flipped[:, ::-1] if fx else flipped
        back = task.unflip(task.target(_crop(task, np.ascontiguousarray(flipped))), fy, fx)
        back[centres], plain[centres] = 0, 0
        # the heat diffusion is not bit-symmetric under flips: flows differ by up to ~0.03 of their
        # unit length; a component not negated back would differ by up to 2
        np.testing.assert_allclose(back, plain, atol=0.05 if name == "flow" else 1e-6, err_msg=f"{name} flips {fy, fx}")


def test_distance_target_follows_geometric_augmentation():
    """Flips and rot90 map the distance target exactly; a zoom and rotation nearly (it is normalised
    per object, so it does not depend on the object's size)."""
    # objects in the middle of a canvas the crops take whole, so no object is cut by a crop edge
    labels = np.pad(_labels(), 48)
    distance = labels_to_distance(labels)
    rng = np.random.default_rng(0)
    exact = AugmentConfig(crop_size=160, flips=True, rot90=True)
    for _ in range(4):
        t = random_transform(rng, labels.shape, exact)
        out = apply_transform({"labels": labels, "distance": distance}, t)
        np.testing.assert_allclose(out["distance"], labels_to_distance(out["labels"]), atol=1e-6)
    free = AugmentConfig(crop_size=160, flips=True, rotate=True, scale_range=(1.25, 1.25))
    errors = []
    for _ in range(4):
        t = random_transform(rng, labels.shape, free)
        out = apply_transform({"labels": labels, "distance": distance}, t)
        inside = out["labels"] > 0
        errors.append(np.median(np.abs(out["distance"] - labels_to_distance(out["labels"]))[inside]))
    assert max(errors) < 0.1, errors


def test_head_relu_only_for_the_boundary_task():
    from unetflow.config import ConfigError, load_config

    assert load_config(None, ["model.task=boundary", "model.boundary.head_relu=true"]).model.boundary.head_relu
    for name in ("flow", "distance"):
        with pytest.raises(ConfigError, match="head options of the boundary model"):
            load_config(None, [f"model.task={name}", "model.boundary.head_relu=true"])


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_every_task_trains_predicts_and_tunes(tmp_path, name):
    """A tiny run of each task: the run directory records the model, predict and evaluate work."""
    pytest.importorskip("tensorflow")
    from unetflow.evaluate import evaluate_run
    from unetflow.predict import load_run, predict_instances
    from unetflow.rundir import RunDir, model_params
    from unetflow.train import run_experiment

    overrides = ["output_dir=" + str(tmp_path / "runs"), "data.cache=" + str(tmp_path / "cache"),
                 "data.root=" + str(tmp_path / "synth"), "data.synthetic_images=12", f"model.task={name}",
                 "model.depth=2", "model.base_filters=4", "augment.crop_size=48", "train.epochs=1",
                 "train.steps_per_epoch=2", "train.batch_size=2", "train.val_crops=4"]
    from unetflow.config import load_config
    cfg = load_config(None, overrides)
    run_dir = run_experiment(cfg, progress=False)
    rd = RunDir(run_dir)
    params = rd.read_json(rd.MODEL_PARAMS)
    assert params == model_params(cfg) and params["input_multiple"] == 2 and params["output_channels"] == TASKS[name].channels
    run = load_run(run_dir)
    assert run.model.outputs[0].shape[-1] == TASKS[name].channels and run.input_multiple == 2
    image = synthetic_nuclei(np.random.default_rng(1), (50, 70))[0]
    labels, raw = predict_instances(run, image, tta=True)
    assert labels.shape == (50, 70) and labels.dtype == np.int32 and raw
    summary = evaluate_run(run_dir, "test", progress=False)
    assert summary["task"] == name and rd.eval_dir("test").is_dir()
    tuned = rd.read_json(rd.THRESHOLDS)
    assert len(tuned["grid"]) == np.prod([len(v) for v in TASKS[name].tuning_grid.values()])
    # prediction reads the input multiple from model.json (not from the layers' names) ...
    rd.write_json(rd.MODEL_PARAMS, {**params, "input_multiple": 8})
    assert load_run(run_dir).input_multiple == 8
    assert predict_instances(load_run(run_dir), image)[0].shape == (50, 70)
    # ... and runs made before model.json existed fall back to their config
    (rd / rd.MODEL_PARAMS).unlink()
    assert load_run(run_dir).params == params


@pytest.mark.slow
def test_tiny_distance_config_segments_the_synthetic_test_split(tmp_path):
    """experiments/tiny_distance.yaml, as shipped: AP@0.5 >= 0.9 on the synthetic test split."""
    pytest.importorskip("tensorflow")
    from pathlib import Path

    from unetflow.config import load_config
    from unetflow.evaluate import evaluate_run
    from unetflow.train import run_experiment

    experiments = Path(__file__).resolve().parent.parent / "experiments"
    cfg = load_config(experiments / "tiny_distance.yaml", ["output_dir=" + str(tmp_path / "runs"),
                                                           "data.cache=" + str(tmp_path / "cache"),
                                                           "data.root=" + str(tmp_path / "synth")])
    summary = evaluate_run(run_experiment(cfg, progress=False), "test", progress=False)
    assert summary["ap50"] >= 0.9, summary["ap50"]
