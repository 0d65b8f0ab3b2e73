"""Training runs: an experiment config in, a run directory out (layout: :mod:`unetflow.rundir`).

Every file is written under a temporary name and renamed, so a run killed at any moment resumes
from its last completed epoch with ``unetflow train --resume RUN_DIR``.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .config import ExperimentConfig, load_config
from .hardware import resolve_mixed_precision
from .io import atomic_write
from .rundir import RunDir, model_params, read_run
from .tasks import get_task

__all__ = ["run_experiment", "resolve_data", "build_model", "TrainingDivergedError", "RunData", "read_run"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunData:
    """The images and labels of each split, resolved from the config."""

    manifest_path: Path
    manifest_sha256: str
    root: Path
    splits: dict  # split -> (image paths, label paths, names)


def resolve_data(config: ExperimentConfig) -> RunData:
    """Find the manifest (or make the synthetic set) and list the files of each split."""
    from .manifest import read_manifest
    from .precompute import cache_env_default
    from .synthetic import make_synthetic_dataset

    d = config.data
    if d.manifest in (None, "synthetic"):
        base = Path(d.root) if d.root else cache_env_default().parent / "synthetic"
        folder = base / f"nuclei-{d.synthetic_images}-seed{config.train.seed}"
        manifest_path = folder / "manifest.csv"
        if not manifest_path.is_file():
            logger.info("generating the synthetic nuclei set in %s", folder)
            make_synthetic_dataset(folder, n_images=d.synthetic_images, seed=config.train.seed)
        manifest = read_manifest(manifest_path, folder)
    else:
        manifest = read_manifest(d.manifest, d.root)
    splits = {}
    for split, limit in (("train", d.max_train_images), ("val", d.max_val_images), ("test", None)):
        rows = manifest.table.index[manifest.table["split"] == split][:limit]
        splits[split] = ([manifest.root / manifest.table["image"][i] for i in rows],
                         [manifest.root / manifest.table["label"][i] for i in rows],
                         [Path(manifest.table["image"][i]).stem for i in rows])
    for split in ("train", "val"):
        if not splits[split][0]:
            raise ValueError(f"{manifest.path}: no rows in split {split!r}; training needs train and val rows")
    return RunData(Path(manifest.path), manifest.sha256, manifest.root, splits)


def build_model(config: ExperimentConfig):
    """The config's model: the U-Net with its task's head."""
    return get_task(config.model.task).build_model(config.input.channels, config.model)


def _optimizer(t, total_steps: int):
    import keras

    from .schedules import WarmupSchedule

    lr = WarmupSchedule(t.learning_rate, warmup_steps=t.warmup_steps, total_steps=total_steps,
                        decay=t.schedule)
    if t.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("train.strategy 'multi_worker' needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def plot_history(history: list, path) -> None:
    """Training curves (loss and metrics, train and validation) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    keys = [k for k in history[0] if k not in ("epoch", "lr") and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, k in zip(axes[0], keys):
        ax.plot(epochs, [h[k] for h in history], "o-", label="train")
        if f"val_{k}" in history[0]:
            ax.plot(epochs, [h[f"val_{k}"] for h in history], "s-", label="val")
        ax.set_title(k)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def _callbacks(rd: RunDir, state: dict, patience):
    import keras

    class Checkpointer(keras.callbacks.Callback):
        """After each epoch with a finite loss: last.keras, best.keras, state, history, curves."""

        def __init__(self):
            super().__init__()
            self.diverged = None

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.diverged = (len(state["history"]) + 1, batch + 1, float(loss))
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if self.diverged or not all(math.isfinite(v) for v in logs.values()):
                self.diverged = self.diverged or (epoch + 1, None, logs.get("loss"))
                self.model.stop_training = True
                return
            lr = self.model.optimizer.learning_rate
            logs["lr"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
            state["history"].append({"epoch": epoch + 1, **logs})
            state["epochs_done"] = epoch + 1
            val = logs.get("val_loss", logs["loss"])
            improved = state.get("best_val_loss") is None or val < state["best_val_loss"]
            if improved:
                state["best_val_loss"] = val
                state["best_epoch"] = epoch + 1
            # state first, model last: a kill in between leaves the model one epoch behind the state,
            # and a resume trusts the model's own step count (see run_experiment)
            rd.write_json(rd.STATE, state)
            import pandas as pd
            atomic_write(rd / rd.HISTORY, lambda tmp: pd.DataFrame(state["history"]).to_csv(tmp, index=False))
            plot_history(state["history"], rd / rd.CURVES)
            if improved:
                atomic_write(rd.model_file("best"), lambda tmp: self.model.save(tmp))
            atomic_write(rd.model_file("last"), lambda tmp: self.model.save(tmp))

    ckpt = Checkpointer()
    cbs = [ckpt, keras.callbacks.TensorBoard(log_dir=str(rd / rd.TENSORBOARD), write_graph=False)]
    if patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
    return ckpt, cbs


def _new_run_dir(config: ExperimentConfig) -> Path:
    base = Path(config.output_dir) / config.name
    run_dir = base
    if run_dir.exists() and any(run_dir.iterdir()):
        run_dir = Path(f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_dir


def run_experiment(config: ExperimentConfig | str | Path | None = None, *, overrides=(), run_dir=None,
                   resume=None, progress: bool = True) -> Path:
    """Train one model from a config and return its run directory.

    Parameters
    ----------
    config : ExperimentConfig or path to a YAML file
    overrides : sequence of str
        ``section.key=value`` overrides (when `config` is a path).
    run_dir : path, optional
        Where to write the run (default: ``output_dir/name``, with a time stamp if it exists).
    resume : path, optional
        A run directory to continue from its last completed epoch (its own config is used).
    progress : bool
        Progress bars (Keras's, and for loading the data).

    Raises
    ------
    TrainingDivergedError
        If the loss became NaN or infinite (the last good checkpoint is kept).
    """
    import keras
    import tensorflow as tf

    from .pipeline import load_training_data, make_dataset
    from .precompute import TargetCache, TargetParams, cache_env_default

    if resume is not None:
        run_dir = Path(resume)
        config, meta, state = read_run(run_dir)
        for stale in list(run_dir.glob(".*.tmp*")) + list((run_dir / RunDir.TENSORBOARD).glob("**/.*.tmp*")):
            stale.unlink()  # half-written files of a killed run (the real files were never touched)
        if meta.get("unetflow_version") != __version__:
            logger.warning("%s was made by unetflow %s; this is %s", run_dir, meta.get("unetflow_version"), __version__)
        if state.get("status") in ("finished", "stopped_early"):
            logger.info("%s already finished (%d epochs)", run_dir, state["epochs_done"])
            return run_dir
        if not RunDir(run_dir).model_file("last").is_file() and state.get("epochs_done", 0) > 0:
            # killed after the first epoch's state but before its model: start that epoch again
            logger.warning("%s: no last.keras yet; restarting from epoch 0", run_dir)
            state.update(epochs_done=0, history=[], best_val_loss=None, best_epoch=None)
    elif not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides)
    data = resolve_data(config)
    strategy = _strategy(config.train.strategy)  # fails early (e.g. no TF_CONFIG), before any file is written

    if resume is None:
        run_dir = Path(run_dir) if run_dir else _new_run_dir(config)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir}: exists and is not empty; continue it with --resume or choose "
                                  "another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"unetflow_version": __version__, "git_commit": _git_commit(), "manifest": str(data.manifest_path.resolve()),
                "manifest_sha256": data.manifest_sha256, "data_root": str(data.root),
                "tensorflow": tf.__version__, "keras": keras.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "task": config.model.task}
        state = {"epochs_done": 0, "best_val_loss": None, "best_epoch": None, "history": [], "status": "running"}
        rd = RunDir(run_dir)
        rd.write_config(config)
        rd.write_json(rd.MODEL_PARAMS, model_params(config))
        rd.write_json(rd.META, meta)
        rd.write_json(rd.STATE, state)
    elif meta.get("manifest_sha256") != data.manifest_sha256:
        logger.warning("the manifest changed since %s was started", run_dir)
    rd = RunDir(run_dir)

    cache = TargetCache(config.data.cache or cache_env_default(), TargetParams())
    train_imgs, train_labs, train_names = data.splits["train"]
    val_imgs, val_labs, val_names = data.splits["val"]
    train_data = load_training_data(train_imgs, train_labs, cache, config.input, train_names, progress)
    val_data = load_training_data(val_imgs, val_labs, cache, config.input, val_names, progress)
    if "train_median_diameter" not in meta:
        # the object size the network learnt: the common size training images were zoomed to, if any
        meta["train_median_diameter"] = config.augment.target_diameter or train_data.median_diameter
        rd.write_json(rd.META, meta)

    t = config.train
    policy = resolve_mixed_precision(t.mixed_precision)
    if meta.get("mixed_precision", "") != policy:
        meta["mixed_precision"] = policy
        rd.write_json(rd.META, meta)
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    try:
        initial_epoch = state["epochs_done"]
        with strategy.scope():
            if initial_epoch > 0:
                from .models import load_model
                model = load_model(rd.model_file("last"))
                done = int(model.optimizer.iterations.numpy()) // t.steps_per_epoch
                if done != initial_epoch:  # killed between writing the state and the model
                    logger.warning("%s: the checkpoint holds %d epochs, the state %d; resuming from the checkpoint",
                                   run_dir, done, initial_epoch)
                    initial_epoch = state["epochs_done"] = done
                    state["history"] = [h for h in state["history"] if h["epoch"] <= done]
            else:
                keras.utils.set_random_seed(t.seed)  # the seed fixes the initial weights too, not only the crops
                model = build_model(config)
                task = get_task(config.model.task)
                model.compile(optimizer=_optimizer(t, t.epochs * t.steps_per_epoch), loss=task.loss(config.loss),
                              metrics=task.metrics())
        per_epoch = t.steps_per_epoch * t.batch_size
        train_ds = make_dataset(train_data, config.model.task, config.augment, batch_size=t.batch_size, seed=t.seed)
        # continue the seeded sample sequence where the last completed epoch ended
        train_ds = train_ds.unbatch().skip(initial_epoch * per_epoch).batch(t.batch_size, drop_remainder=True) \
            if initial_epoch else train_ds
        val_ds = make_dataset(val_data, config.model.task, config.augment, batch_size=t.batch_size,
                              seed=t.seed + 1, augment=False, n_samples=t.val_crops).cache()
        ckpt, callbacks = _callbacks(rd, state, t.early_stopping_patience)
        state["status"] = "running"
        try:
            model.fit(train_ds, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch, initial_epoch=initial_epoch,
                      validation_data=val_ds, callbacks=callbacks, shuffle=False, verbose=1 if progress else 0)
        except KeyboardInterrupt:
            state["status"] = "interrupted"
            rd.write_json(rd.STATE, state)
            logger.warning("interrupted after %d epochs; continue with: unetflow train --resume %s",
                           state["epochs_done"], run_dir)
            raise
        if ckpt.diverged:
            epoch, batch, value = ckpt.diverged
            state["status"] = "diverged"
            rd.write_json(rd.STATE, state)
            where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
            raise TrainingDivergedError(
                f"the loss became {value} at {where}; training stopped. The last good checkpoint "
                f"(epoch {state['epochs_done']}) is kept in {run_dir}. Lower train.learning_rate, add "
                "train.warmup_steps, or check the inputs for extreme values.")
        state["status"] = "stopped_early" if state["epochs_done"] < t.epochs else "finished"
        rd.write_json(rd.STATE, state)
    finally:
        if policy:
            keras.mixed_precision.set_global_policy("float32")
    return run_dir
