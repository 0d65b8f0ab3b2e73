"""bioimage.io export, checked by bioimage.io's own test (``bioimageio test``, bioimageio.core)."""
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("tensorflow")


@pytest.mark.slow
def test_export_passes_bioimageio_test(tiny_flow, tmp_path, capsys):
    from unetflow.cli import main
    from unetflow.predict import load_run

    _, run_dir = tiny_flow
    out = tmp_path / "tiny_flow.zip"
    assert main(["export", str(run_dir), "--out", str(out), "--author", "A. Tester"]) == 0
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        zf.extract("test_input.npy", tmp_path)
    assert {"rdf.yaml", "README.md", "model.keras", "tf_saved_model.zip", "test_input.npy", "test_output.npy"} <= names
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed
    run = load_run(run_dir)
    (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
    assert inp["axes"][1]["size"] == {"min": run.input_multiple, "step": run.input_multiple}
    assert inp["preprocessing"] == [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0,
                                                                     "max_percentile": 99.8}}]
    assert outp["axes"][-1]["channel_names"] == ["flow_y", "flow_x", "cellprob"]
    assert set(rdf["weights"]) == {"keras_v3", "tensorflow_saved_model_bundle"}
    assert rdf["authors"] == [{"name": "A. Tester"}] and rdf["config"]["unetflow"]["task"] == "flow"
    assert np.load(tmp_path / "test_input.npy").shape[1] % run.input_multiple == 0

    bioimageio = shutil.which("bioimageio")
    if bioimageio is None:
        pytest.skip("bioimageio.core is not installed (pip install 'unetflow[export]')")
    summary = tmp_path / "summary.json"
    # in tmp_path: bioimageio test unpacks the SavedModel weights into its working directory
    res = subprocess.run([bioimageio, "test", str(out), "--summary", str(summary)], capture_output=True, text=True,
                         cwd=tmp_path)
    result = json.loads(summary.read_text())
    failed = [d["name"] for d in result["details"] if d["status"] == "failed"]
    assert result["status"] == "passed" and res.returncode == 0, failed

    assert main(["export", str(run_dir), "--out", str(tmp_path / "model.tar")]) == 2
    assert ".zip" in capsys.readouterr().err


@pytest.mark.slow
def test_slim_run_serves_as_a_ready_model(tiny_flow, tmp_path, monkeypatch, capsys):
    import unetflow.rundir as rundir
    from unetflow.cli import main
    from unetflow.io import read_labels
    from unetflow.predict import predict_instances
    from unetflow.synthetic import synthetic_nuclei

    _, run_dir = tiny_flow
    shelf = tmp_path / "pretrained"
    assert main(["export", str(run_dir), "--out", str(shelf / "tiny"), "--format", "run"]) == 0
    written = sorted(p.name for p in (shelf / "tiny").iterdir())
    assert written == sorted({"best.keras", "config.yaml", "meta.json", "model.json", "state.json"}
                             | {p.name for p in Path(run_dir).glob("thresholds.json")})
    assert main(["export", str(run_dir), "--out", str(shelf / "tiny"), "--format", "run"]) == 2  # never overwrites
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", shelf)
    assert rundir.pretrained() == ["tiny"]
    img, _ = synthetic_nuclei(np.random.default_rng(2), (80, 80))
    by_name, _ = predict_instances("tiny", img)
    assert np.array_equal(by_name, predict_instances(str(run_dir), img)[0]) and by_name.max() > 0
    import tifffile
    tifffile.imwrite(tmp_path / "img.tif", img.astype(np.float32))
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", "tiny", str(tmp_path / "img.tif"), "--out", str(tmp_path / "out")]) == 0
    assert np.array_equal(read_labels(tmp_path / "out" / "img_labels.tif"), by_name)
    assert main(["predict", "--model", "cells", str(tmp_path / "img.tif"), "--out", str(tmp_path / "o2")]) == 2
    assert "no such ready model (installed: tiny)" in capsys.readouterr().err


def test_the_ready_nuclei_model_ships():
    """``nuclei`` is in the package, small, and a complete slim run directory."""
    import unetflow.rundir as rundir

    assert "nuclei" in rundir.pretrained()
    folder = rundir.PRETRAINED_DIR / "nuclei"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 10 * 2 ** 20, f"{size / 2 ** 20:.1f} MB"
    config, meta, state = rundir.read_run("nuclei")
    assert config.model.task == "flow" and tuple(config.data.train_splits) == ("train", "val")
    assert meta["train_median_diameter"] > 0 and state["status"] == "finished"
    assert rundir.RunDir("nuclei").thresholds()  # tuned on val
    # a starting point for fine-tuning, by name
    from unetflow.config import load_config
    from unetflow.train import _init_source
    repo = Path(__file__).resolve().parent.parent
    init = _init_source(load_config(repo / "experiments" / "dsb2018_flow.yaml", ["train.init_from=nuclei"]))
    assert Path(init["run"]) == folder.resolve() and init["model"] == "best.keras"


@pytest.mark.slow
def test_nuclei_model_segments_real_nuclei_with_no_training(dsb_root, tmp_path):
    """``unetflow predict --model nuclei`` in a fresh process, on real DSB test-split images."""
    import os
    import sys

    import pandas as pd

    from unetflow.io import read_labels
    from unetflow.metrics import matching_dataset

    table = pd.read_csv(Path(__file__).resolve().parent.parent / "data_manifest.csv")
    rows = table[(table["split"] == "test") & (table["modality"] == "fluorescence")].iloc[:3]
    images = [str(dsb_root / p) for p in rows["image"]]
    res = subprocess.run([sys.executable, "-m", "unetflow.cli", "predict", "--model", "nuclei", *images,
                          "--out", str(tmp_path)], capture_output=True, text=True, env={**os.environ},
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    truths = [read_labels(dsb_root / p) for p in rows["label"]]
    preds = [read_labels(tmp_path / f"{Path(p).stem}_labels.tif") for p in rows["image"]]
    assert matching_dataset(truths, preds, [0.5])[0].ap > 0.6


@pytest.mark.slow
@pytest.mark.parametrize("task", ["flow", "boundary", "distance"])
def test_exported_weights_compute_the_runs_outputs(task, tiny_flow, tmp_path):
    """The package's test output is the run's own network on the test input; the keras_v3 file
    (loaded by plain Keras, no unetflow objects) and the SavedModel both reproduce it."""
    import keras
    import tensorflow as tf

    from unetflow.config import load_config
    from unetflow.export import export_bioimageio
    from unetflow.predict import load_run
    from unetflow.preprocess import prepare_image
    from unetflow.train import run_experiment

    _, run_dir = tiny_flow
    if task != "flow":
        cfg, _ = tiny_flow
        run_dir = run_experiment(load_config(Path(__file__).resolve().parent.parent / "experiments" / f"tiny_{task}.yaml",
                                             ["train.epochs=1", "train.steps_per_epoch=3", "train.val_crops=4",
                                              f"data.root={cfg.data.root}", f"data.cache={cfg.data.cache}"]),
                                 run_dir=tmp_path / task, progress=False)
    package = export_bioimageio(run_dir, tmp_path / "m.zip")
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path / "pkg")
    with zipfile.ZipFile(tmp_path / "pkg" / "tf_saved_model.zip") as zf:
        zf.extractall(tmp_path / "saved")
    raw_input = np.load(tmp_path / "pkg" / "test_input.npy")
    expected = np.load(tmp_path / "pkg" / "test_output.npy")
    run = load_run(run_dir, precision="float32")  # the package computes in float32, whatever this CPU has
    x = prepare_image(raw_input[0], run.config.input)[None]  # the package's scale_range
    own = run.model.predict(x, verbose=0)
    assert expected.shape == own.shape and np.abs(own).max() > 0
    np.testing.assert_allclose(expected, own, atol=1e-5 * np.abs(own).max())
    plain = keras.models.load_model(tmp_path / "pkg" / "model.keras", compile=False)
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, atol=1e-5 * np.abs(own).max())
    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # kept: its variables live as long as it does
    (out,) = loaded.serve(tf.constant(x)).values()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5 * np.abs(own).max())
