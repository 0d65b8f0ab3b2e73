"""Two-channel cells as a first-class case: named channels, the grey/colour rule, per-channel
normalisation, aligned augmentation, a two-channel model trained, fine-tuned from a one-channel
one, and used for prediction and evaluation."""
import json
from pathlib import Path

import numpy as np
import pytest

from unetflow.augment import AugmentConfig, sample_crop
from unetflow.preprocess import InputConfig, input_stats, network_channels, prepare_image

REPO = Path(__file__).resolve().parent.parent
CELLS = InputConfig(channels=2, channel_names=("cytoplasm", "nuclei"), grey=False, invert_bright_background=False)


def _two_stains(rng, shape=(40, 48)):
    cyto = rng.uniform(100, 200, shape).astype(np.float32)
    nuclei = rng.uniform(0, 10, shape).astype(np.float32)
    return np.stack([cyto, nuclei], -1)


def test_a_cytoplasm_channel_is_never_averaged_with_a_nuclear_one():
    rng = np.random.default_rng(0)
    image = _two_stains(rng)
    # a grey model refuses two stains, naming both counts, instead of averaging them
    with pytest.raises(ValueError, match=r"has 2 channel\(s\) but the model takes 1 grey channel.*not a colour image"):
        prepare_image(image, InputConfig())
    # ... but a colour image is still averaged for it (the DSB convention)
    rgb = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(network_channels(rgb, InputConfig())[..., 0], rgb.mean(-1), rtol=1e-6)
    # a named two-channel model takes exactly its channels: never a repeated grey image, never extra ones
    with pytest.raises(ValueError, match=r"has 1 channel\(s\) but the model takes 2 channel\(s\) "
                                         r"\['cytoplasm', 'nuclei'\]: a channel is missing"):
        prepare_image(image[..., 1:], CELLS)
    with pytest.raises(ValueError, match=r"has 3 channel\(s\) but the model takes 2 channel\(s\).*extra"):
        prepare_image(np.dstack([image, image[..., :1]]), CELLS)
    # unnamed colour models keep repeating a grey image into every channel
    colour = InputConfig(channels=3, grey=False)
    assert network_channels(image[..., :1], colour).shape == (40, 48, 3)


def test_quickstart_keeps_stains_apart(tmp_path):
    """`unetflow quickstart --data DIR` on two-channel cells trains on both stains, not their average."""
    from unetflow.config import load_config
    from unetflow.quickstart import input_overrides

    def manifest(counts):
        path = tmp_path / f"m{len(counts)}{counts[0]}.csv"
        path.write_text("image,label,split,channels\n" + "".join(f"i{k},l{k},train,{c}\n" for k, c in enumerate(counts)))
        return path
    cfg = load_config(None, input_overrides(manifest([2, 2])))
    assert (cfg.input.channels, cfg.input.grey) == (2, False)
    for grey_or_colour in ([1, 1], [3, 3], [1, 3]):  # DSB: grey and RGB, averaged as before
        assert input_overrides(manifest(grey_or_colour)) == []


def test_channel_names_are_checked():
    with pytest.raises(ValueError, match="names 1 channel"):
        InputConfig(channels=2, channel_names=("cytoplasm",), grey=False)
    with pytest.raises(ValueError, match="distinct"):
        InputConfig(channels=2, channel_names=("nuclei", "nuclei"), grey=False)
    with pytest.raises(ValueError, match="grey: false"):
        InputConfig(channels=2, channel_names=("cytoplasm", "nuclei"))
    assert CELLS.names == ("cytoplasm", "nuclei") and InputConfig().names == ("grey",)


def test_each_channel_is_normalised_to_its_own_percentiles():
    image = _two_stains(np.random.default_rng(1))
    out = prepare_image(image, CELLS)
    for c in range(2):  # the dim nuclear channel is not scaled by the bright cytoplasm's range
        lo, hi = np.percentile(out[..., c], CELLS.percentiles)
        assert lo == pytest.approx(0, abs=1e-5) and hi == pytest.approx(1, abs=1e-5)
    stats = input_stats(image, CELLS)
    assert stats.hi[0] > 100 > 10 > stats.hi[1]


def test_augmentation_keeps_the_channels_aligned():
    """Every geometric transform moves both channels together: a crop of ``[a, 2a]`` is ``[b, 2b]``."""
    rng = np.random.default_rng(2)
    a = np.random.default_rng(3).uniform(0, 1, (64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30], labels[35:60, 30:55] = 1, 2
    arrays = {"image": np.stack([a, 2 * a], -1), "labels": labels, "cellprob": (labels > 0).astype(np.float32)}
    config = AugmentConfig(crop_size=32, rotate=True, scale_range=(0.7, 1.4))
    moved = 0
    for _ in range(20):
        crop = sample_crop(rng, arrays, config)
        np.testing.assert_allclose(crop["image"][..., 1], 2 * crop["image"][..., 0], rtol=1e-5, atol=1e-6)
        moved += not np.allclose(crop["image"][..., 0], a[:32, :32])
    assert moved  # the crops were really transformed


def test_init_channels_maps_the_first_layer_and_keeps_the_rest():
    pytest.importorskip("tensorflow")
    from unetflow.models import FIRST_CONV, build_flow_unet
    from unetflow.train import carry_weights, input_channel_map

    source = build_flow_unet(1, depth=2, base_filters=4)
    grey = InputConfig()
    for mapping, expect in [(["zero", 0], [None, 0]), ([0, 0], [0, 0]), (["zero", "grey"], [None, 0])]:
        model = build_flow_unet(2, depth=2, base_filters=4)
        cmap = input_channel_map(CELLS, grey, mapping, "src")
        assert list(cmap) == ["cytoplasm", "nuclei"] and list(cmap.values()) == expect
        carry_weights(source, model, cmap)
        kernel, src_kernel = model.get_layer(FIRST_CONV).get_weights()[0], source.get_layer(FIRST_CONV).get_weights()[0]
        for c, k in enumerate(expect):
            np.testing.assert_array_equal(kernel[:, :, c], 0 if k is None else src_kernel[:, :, k])
        for layer in model.layers:  # everything else, the first layer's bias included, as it was
            for w, v in zip(layer.get_weights()[1 if layer.name == FIRST_CONV else 0:],
                            source.get_layer(layer.name).get_weights()[1 if layer.name == FIRST_CONV else 0:]):
                np.testing.assert_array_equal(w, v)
    with pytest.raises(ValueError, match=r"takes 1 input channel\(s\) \['grey'\].*train.init_channels"):
        input_channel_map(CELLS, grey, None, "src")
    with pytest.raises(ValueError, match="3 entries.*2 channel"):
        input_channel_map(CELLS, grey, ["zero", 0, 0], "src")
    with pytest.raises(ValueError, match="no input channel 1"):
        input_channel_map(CELLS, grey, ["zero", 1], "src")
    assert input_channel_map(grey, grey, None, "src") is None


@pytest.fixture(scope="module")
def cells_run(tmp_path_factory):
    """A tiny two-channel flow model trained on synthetic cells, started from a tiny one-channel
    nuclei model with ``init_channels: [zero, 0]``: (source run, cells run, data folder)."""
    pytest.importorskip("tensorflow")
    from unetflow.config import load_config
    from unetflow.synthetic import make_synthetic_dataset
    from unetflow.train import run_experiment

    tmp = tmp_path_factory.mktemp("cells")
    make_synthetic_dataset(tmp / "cells", n_images=10, kind="cells")
    tiny = ["train.epochs=1", "train.steps_per_epoch=4", "train.val_crops=4", "model.depth=2", "model.base_filters=4",
            "augment.crop_size=48", "train.batch_size=2", "data.cache=" + str(tmp / "cache")]
    source = run_experiment(load_config(REPO / "experiments" / "tiny_flow.yaml",
                                        tiny + ["data.synthetic_images=8", "data.root=" + str(tmp / "synth")]),
                            run_dir=tmp / "nuclei", progress=False)
    cells = run_experiment(load_config(REPO / "experiments" / "tiny_flow.yaml", tiny + [
        "data.manifest=" + str(tmp / "cells" / "manifest.csv"), "input.channels=2", "input.grey=false",
        "input.invert_bright_background=false",
        "input.channel_names=[cytoplasm, nuclei]", "train.init_from=" + str(source),
        "train.init_channels=[zero, 0]"]), run_dir=tmp / "cells_run", progress=False)
    return source, cells, tmp / "cells"


def test_two_channel_model_from_a_one_channel_source(cells_run):
    from unetflow.rundir import read_run

    source, cells, _ = cells_run
    config, meta, _ = read_run(cells)
    assert config.input.channel_names == ("cytoplasm", "nuclei")
    assert meta["init_from"]["input_channels"] == {"cytoplasm": None, "nuclei": 0}
    assert meta["init_from"]["run"] == str(Path(source).resolve())


def test_fine_tune_killed_before_its_first_checkpoint_resumes_from_the_source(cells_run, tmp_path, monkeypatch):
    """A resumed run with no checkpoint starts again from epoch 0: with the source's weights carried
    over as the config says, not from random ones."""
    import unetflow.train as T
    from unetflow.config import load_config
    from unetflow.models import FIRST_CONV, load_model

    source, _, data = cells_run
    config = load_config(REPO / "experiments" / "tiny_flow.yaml", [
        "train.epochs=1", "train.steps_per_epoch=2", "train.val_crops=2", "model.depth=2", "model.base_filters=4",
        "augment.crop_size=48", "train.batch_size=2", "data.cache=" + str(tmp_path / "cache"),
        "data.manifest=" + str(data / "manifest.csv"), "input.channels=2", "input.grey=false",
        "input.invert_bright_background=false", "input.channel_names=[cytoplasm, nuclei]",
        "train.init_from=" + str(source), "train.init_channels=[zero, 0]"])
    started = []

    def killed(model, *args, **kwargs):
        started.append(model.get_layer(FIRST_CONV).get_weights()[0].copy())
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "_fit", killed)
    for attempt in (lambda: T.run_experiment(config, run_dir=tmp_path / "run", progress=False),
                    lambda: T.run_experiment(resume=tmp_path / "run", progress=False)):
        with pytest.raises(KeyboardInterrupt):
            attempt()
    grey = load_model(Path(source) / "best.keras").get_layer(FIRST_CONV).get_weights()[0][:, :, 0]
    for kernel in started:  # the first start and the resumed one: [zero, the source's grey]
        np.testing.assert_array_equal(kernel[:, :, 1], grey)
        np.testing.assert_array_equal(kernel[:, :, 0], 0)


def test_two_channel_prediction_and_evaluation(cells_run):
    from unetflow.evaluate import evaluate_run
    from unetflow.io import read_image
    from unetflow.predict import predict_instances

    _, cells, data = cells_run
    image = read_image(data / "images" / "synth_009.tif")
    assert image.shape[-1] == 2
    labels, _ = predict_instances(cells, image)
    assert labels.shape == image.shape[:2]
    with pytest.raises(ValueError, match=r"has 1 channel\(s\) but the model takes 2 channel\(s\)"):
        predict_instances(cells, image[..., 1])
    thresholds = cells / "thresholds.json"
    thresholds.unlink(missing_ok=True)
    s = evaluate_run(cells, "val", progress=False)
    assert s["n_images"] == 2 and s["n_true"] > 0
    # scored on val, a run is scored at the thresholds it will use: those tuned on val
    tuned = json.loads(thresholds.read_text())
    assert s["postprocess"]["cellprob_threshold"] == tuned["postprocess"]["cellprob_threshold"]
    assert np.mean([s["ap50"], s["ap75"], s["ap90"]]) == pytest.approx(tuned["value"], abs=1e-9)


def test_two_channel_napari_widget_formats_and_export(cells_run, tmp_path):
    """The napari widget takes the stains as one (2, H, W) layer, as (H, W, 2) or as two layers,
    and the output formats and the bioimage.io export carry the two named channels."""
    from types import SimpleNamespace

    from unetflow._napari import segment
    from unetflow.formats import write_outputs
    from unetflow.io import read_image
    from unetflow.predict import predict_instances

    _, cells, data = cells_run
    image = read_image(data / "images" / "synth_009.tif")
    expected, raw = predict_instances(cells, image)
    for layers in ([np.moveaxis(image, -1, 0)], [image], [image[..., 0], image[..., 1]]):
        args = [SimpleNamespace(data=a, name="cells") for a in layers]
        (labels, _, kind), _ = segment(args[0], *args[1:], run=str(cells))
        assert kind == "labels" and np.array_equal(labels, expected)
    with pytest.raises(ValueError, match=r"has 1 channel\(s\) but the model takes 2"):
        segment(SimpleNamespace(data=image[..., 1], name="nuclei only"), run=str(cells))
    write_outputs(tmp_path, "synth_009", expected, raw, ("labels", "cellpose"), filename=data / "images" / "synth_009.tif")
    assert (tmp_path / "synth_009_seg.npy").is_file() and (tmp_path / "synth_009_labels.tif").is_file()
    import zipfile

    import yaml

    from unetflow.export import export_bioimageio

    package = export_bioimageio(cells, tmp_path / "cells.zip")
    with zipfile.ZipFile(package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        zf.extract("test_input.npy", tmp_path)
    assert rdf["inputs"][0]["axes"][-1]["channel_names"] == ["cytoplasm", "nuclei"]
    assert np.load(tmp_path / "test_input.npy").shape[-1] == 2
