"""Training runs end to end on the synthetic set (tiny models, small crops)."""
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from unetflow.config import ConfigError as ConfigErrorType, load_config
from unetflow.train import TrainingDivergedError, read_run, run_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def tiny(tmp_path, task="flow", *extra):
    return ["output_dir=" + str(tmp_path / "runs"), "data.cache=" + str(tmp_path / "cache"),
            "data.root=" + str(tmp_path / "synth"), "data.synthetic_images=12", f"model.task={task}",
            "model.depth=2", "model.base_filters=4", "augment.crop_size=48", "train.epochs=2",
            "train.steps_per_epoch=3", "train.batch_size=2", "train.val_crops=4", *extra]


def _test_split(cfg):
    from unetflow.train import resolve_data
    return list(zip(*resolve_data(cfg).splits["test"][:2]))


@pytest.mark.slow
def test_tiny_flow_unet_learns_and_recovers_objects(tiny_flow):
    from unetflow.io import read_image, read_labels
    from unetflow.metrics import matching_dataset
    from unetflow.postprocess import compute_masks
    from unetflow.preprocess import prepare_image

    cfg, run = tiny_flow
    _, _, state = read_run(run)
    losses = [h["loss"] for h in state["history"]]
    assert state["epochs_done"] == 6 and losses[-1] < 0.5 * losses[0], losses
    from unetflow.models import load_model
    model = load_model(run / "best.keras")
    truth, pred = [], []
    for img, lab in _test_split(cfg):
        y = model.predict(prepare_image(read_image(img), cfg.input)[None], verbose=0)[0]
        pred.append(compute_masks(np.moveaxis(y[..., :2], -1, 0), y[..., 2], cfg.postprocess.flow))
        truth.append(read_labels(lab))
    m = matching_dataset(truth, pred, [0.5])[0]
    assert m.recall > 0.6 and m.precision > 0.6, m


@pytest.mark.slow
@pytest.mark.parametrize("zoom", [0.5, 1.0, 2.0])
def test_diameter_estimate_at_known_scales(tiny_flow, zoom):
    """The size search finds the objects' median diameter of synthetic images zoomed 0.5-2x to 10%."""
    from skimage.transform import rescale

    from unetflow.flows import diameters
    from unetflow.io import read_image, read_labels
    from unetflow.predict import load_run
    from unetflow.preprocess import prepare_image
    from unetflow.sizing import estimate_diameter

    cfg, run_dir = tiny_flow
    run = load_run(run_dir)
    errors = []
    for img, lab in _test_split(cfg):
        x = rescale(read_image(img), zoom, order=1, channel_axis=-1, preserve_range=True, anti_aliasing=zoom < 1)
        truth = diameters(rescale(read_labels(lab), zoom, order=0, preserve_range=True, anti_aliasing=False)
                          .astype(np.int32))
        d = estimate_diameter(run.model, prepare_image(x, cfg.input), task="flow",
                              train_diameter=run.train_diameter, postprocess=run.postprocess_config())
        errors.append(d / truth - 1)
    assert np.median(np.abs(errors)) <= 0.10, errors


@pytest.mark.slow
def test_auto_diameter_through_api_and_cli(tiny_flow, tmp_path, capsys):
    from skimage.transform import rescale

    from unetflow.cli import main
    from unetflow.io import read_image, read_labels, write_image
    from unetflow.metrics import matching
    from unetflow.predict import load_run, predict_instances

    cfg, run_dir = tiny_flow
    img, lab = _test_split(cfg)[0]
    big = rescale(read_image(img), 2.0, order=1, channel_axis=-1, preserve_range=True)
    truth = rescale(read_labels(lab), 2.0, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    labels, raw = predict_instances(run_dir, big, diameter="auto")
    assert labels.shape == truth.shape and raw["diameter"] > 0
    assert matching(truth, labels, 0.5).recall > 0.6
    # no diameter: the run's own choice; native for this run, auto for a run trained at one object size
    run = load_run(run_dir)
    assert run.default_sizing == "native" and "diameter" not in predict_instances(run, big)[1]
    run.config = dataclasses.replace(run.config, augment=dataclasses.replace(run.config.augment, target_diameter=16))
    assert run.default_sizing == "auto" and predict_instances(run, big)[1]["diameter"] > 0
    write_image(tmp_path / "big.tif", big.astype(np.uint16))
    assert main(["predict", str(run_dir), str(tmp_path / "big.tif"), "--out", str(tmp_path / "out"),
                 "--diameter", "auto"]) == 0
    assert (tmp_path / "out" / "big_labels.tif").is_file()
    for bad in ("-3", "0", "large"):
        assert main(["predict", str(run_dir), str(tmp_path / "big.tif"), "--out", str(tmp_path / "bad"),
                     "--diameter", bad]) == 2
        assert "positive number of pixels or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_run_directory_contents_and_traceability(tmp_path):
    run = run_experiment(load_config(None, tiny(tmp_path, "boundary")), progress=False)
    for f in ("config.yaml", "meta.json", "state.json", "best.keras", "last.keras", "history.csv",
              "training_curves.png"):
        assert (run / f).is_file(), f
    assert any((run / "tensorboard").rglob("*tfevents*"))
    config, meta, state = read_run(run)
    assert config.model.task == "boundary" and config.train.epochs == 2
    assert len(meta["manifest_sha256"]) == 64 and meta["unetflow_version"] and meta["git_commit"]
    assert state["status"] == "finished" and [h["epoch"] for h in state["history"]] == [1, 2]
    assert {"recall_boundary", "val_loss"} <= set(state["history"][0])


def test_killed_run_resumes_from_last_epoch(tmp_path):
    """SIGKILL right after the first epoch's checkpoint: the files are whole and the run resumes.
    Epochs of 200 steps (seconds each) leave the 0.2 s poll no chance to miss epoch 2's start."""
    args = tiny(tmp_path, "flow", "train.epochs=3", "train.steps_per_epoch=200")
    run = tmp_path / "runs" / "killed"
    cmd = [sys.executable, "-m", "unetflow.cli", "train", str(EXPERIMENTS / "tiny_flow.yaml"), "--run-dir", str(run)]
    cmd += [a for x in args for a in ("--set", x)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = run / "state.json"
        if (run / "last.keras").exists() and json.loads(state.read_text())["epochs_done"] >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((run / "state.json").read_text())["epochs_done"]
    assert 1 <= done < 3
    from unetflow.models import load_model
    load_model(run / "last.keras")  # the checkpoint is whole, whenever the kill came
    run_experiment(resume=run, progress=False)
    assert not list(run.glob(".*tmp*"))  # a temporary file a kill left behind is cleaned up on resume
    _, _, state = read_run(run)
    assert state["status"] == "finished" and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    model = load_model(run / "last.keras")
    assert int(model.optimizer.iterations.numpy()) == 3 * 200  # the optimizer state was carried over


def _interrupt_after_epoch(monkeypatch, epoch):
    """Make the next training stop (as by Ctrl-C) once its checkpoints of `epoch` are written."""
    import keras

    import unetflow.train as T
    real = T._callbacks

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, e, logs=None):
            if e + 1 == epoch:
                raise KeyboardInterrupt

    def callbacks(*args, **kwargs):
        ckpt, cbs = real(*args, **kwargs)
        return ckpt, cbs + [Stop()]  # after the run's own: the epoch is saved first
    monkeypatch.setattr(T, "_callbacks", callbacks)


def test_resumed_run_continues_the_data_stream_and_keeps_the_best(tmp_path, monkeypatch):
    """Interrupted after epoch 1 and resumed, a run trains on the crops an uninterrupted run of the
    same seed sees in epochs 2 and 3 (not the first epoch's again), with the optimizer state carried
    over: the two histories agree.  best.keras and best_val_loss survive the resume, and resuming a
    finished run changes nothing."""
    args = tiny(tmp_path, "flow", "train.epochs=3")
    whole = run_experiment(load_config(None, args), run_dir=tmp_path / "whole", progress=False)
    _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(None, args), run_dir=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    _, _, state = read_run(tmp_path / "cut")
    assert state["status"] == "interrupted" and state["epochs_done"] == 1
    best_before = (state["best_epoch"], state["best_val_loss"])
    assert best_before[0] == 1 and (tmp_path / "cut" / "best.keras").is_file()
    cut = run_experiment(resume=tmp_path / "cut", progress=False)
    a, b = read_run(whole)[2], read_run(cut)[2]
    assert b["status"] == "finished" and [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for ha, hb in zip(a["history"], b["history"]):  # the same crops and steps: equal up to float noise
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-4), (ha, hb)
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4), (ha, hb)
    # the best epoch is the best over all three, the first epoch's included
    losses = [h["val_loss"] for h in b["history"]]
    assert b["best_epoch"] == 1 + int(np.argmin(losses)) and b["best_val_loss"] == pytest.approx(min(losses))
    # a finished run resumed again is left as it is
    before = {f: (cut / f).read_bytes() for f in ("state.json", "last.keras", "best.keras")}
    assert run_experiment(resume=cut, progress=False) == cut
    assert {f: (cut / f).read_bytes() for f in before} == before


def test_checkpoint_and_state_that_disagree_resume_from_the_checkpoint(tmp_path, monkeypatch, caplog):
    """Killed between writing state.json and last.keras: the state counts 2 epochs, the checkpoint
    holds 1.  The resume trusts the checkpoint (the weights it can load), trains epochs 2 and 3, and
    says so."""
    import shutil

    run = tmp_path / "run"
    _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(None, tiny(tmp_path, "flow", "train.epochs=3")), run_dir=run, progress=False)
    shutil.copy(run / "last.keras", tmp_path / "epoch1.keras")
    monkeypatch.undo()
    _interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(resume=run, progress=False)
    monkeypatch.undo()
    shutil.copy(tmp_path / "epoch1.keras", run / "last.keras")
    assert read_run(run)[2]["epochs_done"] == 2
    run_experiment(resume=run, progress=False)
    assert "the checkpoint holds 1 epochs, the state 2" in caplog.text
    _, _, state = read_run(run)
    assert state["status"] == "finished" and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    from unetflow.models import load_model
    assert int(load_model(run / "last.keras").optimizer.iterations.numpy()) == 3 * 3


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    import unetflow.pipeline as pipeline
    real = pipeline._crops_fn

    def poisoned(data, task, config, seed, augment):
        make = real(data, task, config, seed, augment)

        def make_nan(i):
            image, target = make(i)
            if augment and i >= 3 * 2:  # from the second epoch on (3 steps of batch 2)
                target = target * np.nan
            return image, target
        return make_nan

    monkeypatch.setattr(pipeline, "_crops_fn", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"nan.*epoch 2.*last good checkpoint \(epoch 1\)"):
        run_experiment(load_config(None, tiny(tmp_path, "flow")), run_dir=tmp_path / "nanrun", progress=False)
    _, _, state = read_run(tmp_path / "nanrun")
    assert state["status"] == "diverged" and state["epochs_done"] == 1
    assert (tmp_path / "nanrun" / "last.keras").is_file()


def test_missing_manifest_and_cli_errors(tmp_path, capsys):
    from unetflow.cli import main
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        run_experiment(load_config(None, tiny(tmp_path) + ["data.manifest=" + str(tmp_path / "nowhere.csv")]))
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["train", "--resume", str(tmp_path / "norun")]) == 2


def test_mirrored_strategy_and_multi_worker_check(tmp_path, monkeypatch):
    # one code path for several GPUs: MirroredStrategy runs on the CPU as a single replica
    run = run_experiment(load_config(None, tiny(tmp_path, "flow", "train.strategy=mirrored", "train.epochs=1")),
                         progress=False)
    assert read_run(run)[2]["status"] == "finished"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        run_experiment(load_config(None, tiny(tmp_path, "flow", "train.strategy=multi_worker", "name=mw")),
                       progress=False)
    assert not (tmp_path / "runs" / "mw").exists()


@pytest.mark.slow
def test_fine_tuning_from_a_run(tiny_flow, tmp_path, capsys):
    """train.init_from starts from another run's weights; freeze_encoder_steps keeps the encoder
    fixed for that many steps; the source is checked first and recorded."""
    from unetflow.cli import main
    from unetflow.models import load_model

    cfg, src = tiny_flow
    source = load_model(Path(src) / "best.keras")
    # new synthetic images (another seed), few steps
    base = ["output_dir=" + str(tmp_path / "runs"), "data.cache=" + str(tmp_path / "cache"),
            "data.root=" + str(tmp_path / "synth"), "train.seed=1", "train.epochs=2", "train.steps_per_epoch=3",
            "train.val_crops=4", "train.init_from=" + str(src)]
    tiny_yaml = EXPERIMENTS / "tiny_flow.yaml"

    def encoder_and_rest(model):
        enc = [w for layer in model.layers if layer.name.startswith("down") for w in layer.get_weights()]
        rest = [w for layer in model.layers if not layer.name.startswith("down") for w in layer.get_weights()]
        return enc, rest

    frozen = run_experiment(load_config(tiny_yaml, base + ["train.freeze_encoder_steps=6"]),
                            run_dir=tmp_path / "frozen", progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the optimizer state is whole: saved with every variable
        last = load_model(frozen / "last.keras")
    enc, rest = encoder_and_rest(last)
    src_enc, src_rest = encoder_and_rest(source)
    assert all(np.array_equal(a, b) for a, b in zip(enc, src_enc))  # loaded, then never moved
    assert not all(np.array_equal(a, b) for a, b in zip(rest, src_rest))  # the decoder and head trained
    _, meta, _ = read_run(frozen)
    assert meta["init_from"]["run"] == str(Path(src).resolve()) and meta["init_from"]["freeze_encoder_steps"] == 6
    assert len(meta["init_from"]["sha256"]) == 64

    released = run_experiment(load_config(tiny_yaml, base + ["train.freeze_encoder_steps=3"]),
                              run_dir=tmp_path / "released", progress=False)
    enc, _ = encoder_and_rest(load_model(released / "last.keras"))
    assert not all(np.array_equal(a, b) for a, b in zip(enc, src_enc))  # trained after step 3

    # a source that does not fit is refused before anything is written, naming what differs
    for override, message in [(["model.task=boundary"], "model.task"), (["model.base_filters=8"], "model.base_filters"),
                             (["input.grey=false", "input.channels=3"], "input channel.*train.init_channels")]:
        with pytest.raises(ValueError, match=f"{message}"):
            run_experiment(load_config(tiny_yaml, base + override), run_dir=tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()
    assert main(["train", str(tiny_yaml), "--init-from", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "bad"),
                 *[a for x in base[:-1] for a in ("--set", x)]]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(ConfigErrorType, match="needs train.init_from"):
        load_config(tiny_yaml, ["train.freeze_encoder_steps=5"])


def test_training_log_is_one_line_per_epoch_when_not_a_terminal(tmp_path, capsys):
    """In a log file Keras' bar would be hundreds of carriage-return updates an epoch."""
    import io

    from unetflow.cli import main
    from unetflow.progress import fit_verbosity

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert fit_verbosity(True, Terminal()) == 1 and fit_verbosity(True, io.StringIO()) == 2
    assert fit_verbosity(False, Terminal()) == 0
    args = ["train", str(EXPERIMENTS / "tiny_flow.yaml"), "--run-dir", str(tmp_path / "run")]
    for kv in ("train.epochs=2", "train.steps_per_epoch=3", "train.val_crops=4", "model.depth=2",
               "model.base_filters=4", "augment.crop_size=48", "train.batch_size=2", "data.synthetic_images=8",
               f"data.root={tmp_path / 'synth'}", f"data.cache={tmp_path / 'cache'}"):
        args += ["--set", kv]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "\r" not in out + captured.err and "\x08" not in out  # no Keras bar, no tqdm bars on stderr
    import re
    assert len(re.findall(r"^3/3 - .*loss: .*val_loss: ", out, flags=re.M)) == 2
