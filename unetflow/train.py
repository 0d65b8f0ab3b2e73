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
from .progress import fit_verbosity
from .rundir import RunDir, model_params, read_run
from .tasks import get_task

__all__ = ["run_experiment", "resolve_data", "build_model", "TrainingDivergedError", "RunData", "read_run",
           "input_channel_map", "carry_weights"]

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
    from .manifest import find_manifest, read_manifest
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
        manifest = read_manifest(find_manifest(d.manifest, d.root), d.root)
    splits = {}
    for split, limit in (("train", d.max_train_images), ("val", d.max_val_images), ("test", None)):
        rows = manifest.table.index[manifest.table["split"] == split][:limit]
        splits[split] = ([manifest.root / manifest.table["image"][i] for i in rows],
                         [manifest.root / manifest.table["label"][i] for i in rows],
                         [Path(manifest.table["image"][i]).stem for i in rows])
    for split in ("train", "val"):
        if not splits[split][0]:
            raise ValueError(f"{manifest.path}: no rows in split {split!r}; training needs train and val rows")
    if d.train_splits != ("train",):
        splits["train"] = tuple(sum((list(splits[s][k]) for s in d.train_splits), []) for k in range(3))
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
        if "TF_CONFIG" in os.environ:
            return tf.distribute.MultiWorkerMirroredStrategy()
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # one task per worker under srun
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        raise ValueError("train.strategy 'multi_worker' needs the TF_CONFIG environment variable "
                         "(cluster spec and this worker's task) or a SLURM job step of several tasks "
                         "(see docs/distributed.md)")
    return tf.distribute.get_strategy()


def _is_chief(strategy) -> bool:
    """Whether this process writes the run directory: the only one, the "chief", or worker 0 of a
    cluster without a chief (TensorFlow's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def _datasets(strategy, train_data, val_data, config: ExperimentConfig, initial_epoch: int):
    """The training and validation datasets; under a ``tf.distribute`` strategy, one shard per input
    pipeline (worker), batched per replica, so ``train.batch_size`` is the global batch."""
    from .pipeline import make_dataset

    t, task, aug = config.train, config.model.task, config.augment
    # a resumed run continues the seeded sample sequence where its last completed epoch ended
    start = initial_epoch * t.steps_per_epoch * t.batch_size

    def make(batch, shard=(0, 1)):
        train = make_dataset(train_data, task, aug, batch_size=batch, seed=t.seed, start=start, shard=shard)
        val = make_dataset(val_data, task, aug, batch_size=batch, seed=t.seed + 1, augment=False,
                           n_samples=t.val_crops, shard=shard).cache()
        return train, val

    if t.strategy == "default":
        return make(t.batch_size)
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise ValueError(f"train.batch_size ({t.batch_size}) is the global batch: it must be a multiple of the "
                         f"{replicas} replicas of train.strategy {t.strategy!r}")

    def per_replica(which):
        def fn(ctx):
            return make(ctx.get_per_replica_batch_size(t.batch_size), (ctx.input_pipeline_id, ctx.num_input_pipelines))[which]
        return strategy.distribute_datasets_from_function(fn)

    return per_replica(0), per_replica(1)


def _multi_worker_fixes(model, strategy):
    """Work around keras-team/keras#20585 (Keras 3 `fit` under MultiWorkerMirroredStrategy), twice.

    * Keras builds a model under a distribution strategy from
      the first batch *reduced across replicas*, a collective that fails on batches of several
      workers (``Attempt to convert a value (PerReplica...)``).  Building needs only shapes, so build
      from this worker's first replica's part of the batch instead.
    * Keras averages each step's logs over workers along ``axis=0``, which a scalar (every loss and
      metric value) does not have (``Invalid reduction dimension 0``): average scalars as they are.
    """
    import types

    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_trainer

    def local(value):
        return strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)

    original = getattr(keras_trainer.reduce_per_replica, "original", keras_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            def mean(v):
                if local(v).shape.rank != 0:
                    return original(v, strategy, reduction)
                distributed = isinstance(v, tf.distribute.DistributedValues)
                return strategy.reduce("MEAN", v, axis=None) if distributed else v
            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica.original = original
    keras_trainer.reduce_per_replica = reduce_per_replica


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
                atomic_write(rd.model_file("best"), self.save)
            atomic_write(rd.model_file("last"), self.save)

        def save(self, path):
            # saved with every layer trainable, as the optimizer (built for all of them) expects on
            # reload: a checkpoint taken while the encoder is frozen must resume with its moments
            frozen = [layer for layer in self.model.layers if not layer.trainable]
            for layer in frozen:
                layer.trainable = True
            try:
                self.model.save(path)
            finally:
                for layer in frozen:
                    layer.trainable = False

    ckpt = Checkpointer()
    cbs = [ckpt, keras.callbacks.TensorBoard(log_dir=str(rd / rd.TENSORBOARD), write_graph=False)]
    if patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
    return ckpt, cbs


def _init_source(config: ExperimentConfig) -> dict | None:
    """Check ``train.init_from`` before any file is written: a finished run of the same task and
    architecture, whose input channels are this config's or are mapped by ``train.init_channels``.
    Returns what the run's meta records about it."""
    src = config.train.init_from
    if not src:
        return None
    rd = RunDir(src)  # a run directory, or the name of a ready model
    src_config, _, src_state = read_run(rd.path)  # names the missing directory or file
    model_file = rd.model_file("best")
    if not model_file.is_file():
        raise FileNotFoundError(f"train.init_from: {model_file} does not exist; was {src} trained?")
    mine, theirs = config.model, src_config.model
    checks = [("model.task", mine.task, theirs.task),
              *[(f"model.{k}", getattr(mine, k), getattr(theirs, k)) for k in ("depth", "base_filters", "batch_norm")],
              (f"model.{mine.task}", getattr(mine, mine.task, None), getattr(theirs, mine.task, None))]
    for key, a, b in checks:
        if a != b:
            raise ValueError(f"train.init_from: {src} has {key} = {b!r}, this config {a!r}; fine-tuning needs the "
                             "same task and architecture")
    channels = input_channel_map(config.input, src_config.input, config.train.init_channels, src)
    from .io import hash_file
    return {"run": str(rd.path.resolve()), "model": model_file.name, "sha256": hash_file(model_file).hexdigest(),
            "epochs_done": src_state.get("epochs_done"), "freeze_encoder_steps": config.train.freeze_encoder_steps,
            **({"input_channels": channels} if channels else {})}


def input_channel_map(mine, theirs, init_channels, src) -> dict | None:
    """Which source input channel each of this config's input channels starts from.

    Parameters
    ----------
    mine, theirs : InputConfig
        This config's input and the source run's.
    init_channels : sequence or None
        ``train.init_channels``: per channel of `mine`, a source channel (index or name) or ``"zero"``.
    src : str
        The source, for messages.

    Returns
    -------
    dict or None
        ``{this channel's name: (source channel index, or None for zero)}``, or None when the
        channels are the same and no mapping was given (the weights are taken as they are).

    Raises
    ------
    ValueError
        If the channel counts differ without a mapping, or the mapping names a channel the source
        does not have, or has the wrong length.
    """
    if init_channels is None:
        if mine.channels != theirs.channels:
            raise ValueError(f"train.init_from: {src} takes {theirs.channels} input channel(s) {list(theirs.names)}, "
                             f"this config {mine.channels} {list(mine.names)}; say which source channel each of "
                             f"them starts from with train.init_channels (e.g. [zero, 0])")
        return None
    if len(init_channels) != mine.channels:
        raise ValueError(f"train.init_channels has {len(init_channels)} entries, but this config's input has "
                         f"{mine.channels} channel(s) {list(mine.names)}: one entry per channel")
    out = {}
    for name, c in zip(mine.names, init_channels):
        if c == "zero":
            out[name] = None
        elif isinstance(c, int) and c < theirs.channels:
            out[name] = c
        elif isinstance(c, str) and c in theirs.names:
            out[name] = theirs.names.index(c)
        else:
            raise ValueError(f"train.init_channels: {src} has no input channel {c!r} (its channels: "
                             f"{list(theirs.names)}, indices 0..{theirs.channels - 1}, or 'zero')")
    return out


def carry_weights(source, model, channel_map: dict | None = None) -> None:
    """Copy every weight of `source` into `model` (same architecture), the first convolution's input
    channels through `channel_map` (:func:`input_channel_map`; a channel mapped to None starts at 0)."""
    import numpy as np

    from .models import FIRST_CONV

    for layer in model.layers:
        weights = source.get_layer(layer.name).get_weights()
        if layer.name == FIRST_CONV and channel_map is not None:
            kernel, *rest = weights
            mapped = np.zeros(kernel.shape[:2] + (len(channel_map),) + kernel.shape[3:], kernel.dtype)
            for c, k in enumerate(channel_map.values()):
                if k is not None:
                    mapped[:, :, c] = kernel[:, :, k]
            weights = [mapped, *rest]
        layer.set_weights(weights)


def _encoder_layers(model):
    """The contracting path of a unetflow U-Net (see :func:`unetflow.models.unet_backbone`)."""
    return [layer for layer in model.layers if layer.name.startswith("down")]


def _encoder_freeze(steps: int):
    """A callback that releases the encoder (frozen before ``fit``) once `steps` steps are done."""
    import keras

    class ReleaseEncoder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            frozen = _encoder_layers(self.model)
            if frozen and not frozen[0].trainable and int(self.model.optimizer.iterations.numpy()) >= steps:
                for layer in frozen:
                    layer.trainable = True
                self.model.make_train_function(force=True)  # fit calls self.train_function anew each step
                logger.info("encoder released after %d steps", steps)
    return ReleaseEncoder()


def _new_run_dir(config: ExperimentConfig) -> Path:
    base = Path(config.output_dir) / config.name
    run_dir = base
    if run_dir.exists() and any(run_dir.iterdir()):
        run_dir = Path(f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_dir


def _reopen(run_dir: Path):
    """A run directory to resume: ``(config, meta, state)``, its half-written files of a kill removed;
    state None when the run already finished."""
    config, meta, state = read_run(run_dir)
    for stale in list(run_dir.glob(".*.tmp*")) + list((run_dir / RunDir.TENSORBOARD).glob("**/.*.tmp*")):
        stale.unlink()  # half-written files of a killed run (the real files were never touched)
    if meta.get("unetflow_version") != __version__:
        logger.warning("%s was made by unetflow %s; this is %s", run_dir, meta.get("unetflow_version"), __version__)
    if state.get("status") in ("finished", "stopped_early"):
        logger.info("%s already finished (%d epochs)", run_dir, state["epochs_done"])
        return config, meta, None
    if not RunDir(run_dir).model_file("last").is_file() and state.get("epochs_done", 0) > 0:
        # killed after the first epoch's state but before its model: start that epoch again
        logger.warning("%s: no last.keras yet; restarting from epoch 0", run_dir)
        state.update(epochs_done=0, history=[], best_val_loss=None, best_epoch=None)
    return config, meta, state


def _new_run(config: ExperimentConfig, data: RunData, run_dir, chief: bool):
    """Where a new run goes, and its first meta and state (nothing is written yet)."""
    import keras
    import tensorflow as tf

    init = _init_source(config)
    run_dir = Path(run_dir) if run_dir else _new_run_dir(config)
    if chief and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir}: exists and is not empty; continue it with --resume or choose "
                              "another --run-dir")
    meta = {"unetflow_version": __version__, "git_commit": _git_commit(), "manifest": str(data.manifest_path.resolve()),
            "manifest_sha256": data.manifest_sha256, "data_root": str(data.root),
            "tensorflow": tf.__version__, "keras": keras.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "task": config.model.task, **({"init_from": init} if init else {})}
    state = {"epochs_done": 0, "best_val_loss": None, "best_epoch": None, "history": [], "status": "running"}
    return run_dir, meta, state


def _load_data(config: ExperimentConfig, data: RunData, progress: bool):
    """The train and val images with their cached targets."""
    from .pipeline import load_training_data
    from .precompute import TargetCache, TargetParams, cache_env_default
    from .volume import load_volume_crops_data, load_volume_training_data

    cache = TargetCache(config.data.cache or cache_env_default(), TargetParams())
    out = []
    for split in ("train", "val"):
        images, labels, names = data.splits[split]
        if get_task(config.model.task).spatial_dims == 3:
            out.append(load_volume_crops_data(images, labels, config.input, names, progress))
        elif config.data.volume_slices:
            out.append(load_volume_training_data(images, labels, config.input, names, progress))
        else:
            out.append(load_training_data(images, labels, cache, config.input, names, progress))
    return tuple(out)


def _model(config: ExperimentConfig, run_dir: Path, state: dict, init: dict | None):
    """The model to train and the epoch it starts at: the last checkpoint of a resumed run, else a new
    model (its weights carried over from ``train.init_from`` if given, a resumed run's too)."""
    import keras

    from .models import load_model

    t = config.train
    initial_epoch = state["epochs_done"]
    if initial_epoch > 0:
        model = load_model(RunDir(run_dir).model_file("last"))
        done = int(model.optimizer.iterations.numpy()) // t.steps_per_epoch
        if done != initial_epoch:  # killed between writing the state and the model
            logger.warning("%s: the checkpoint holds %d epochs, the state %d; resuming from the checkpoint",
                           run_dir, done, initial_epoch)
            initial_epoch = state["epochs_done"] = done
            state["history"] = [h for h in state["history"] if h["epoch"] <= done]
        return model, initial_epoch
    keras.utils.set_random_seed(t.seed)  # the seed fixes the initial weights too, not only the crops
    model = build_model(config)
    task = get_task(config.model.task)
    model.compile(optimizer=_optimizer(t, t.epochs * t.steps_per_epoch), loss=task.loss(getattr(config.loss, task.name)),
                  metrics=task.metrics())
    if init:  # the file that was hashed when the run started
        carry_weights(load_model(Path(init["run"]) / init["model"]), model, init.get("input_channels"))
    return model, 0


def _freeze_encoder(model, steps: int) -> None:
    """Freeze the encoder while the optimizer has taken fewer than `steps` steps."""
    if steps and int(model.optimizer.iterations.numpy()) < steps:
        # the optimizer knows every variable before some are frozen, so releasing them later
        # needs no new optimizer (and keeps its schedule and moments)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for layer in _encoder_layers(model):
            layer.trainable = False


def _fit(model, rd: RunDir, run_dir: Path, state: dict, config: ExperimentConfig, datasets, initial_epoch: int,
         progress: bool) -> None:
    """Keras ``fit`` with the run's callbacks; the state records how it ended."""
    t = config.train
    train_ds, val_ds = datasets
    ckpt, callbacks = _callbacks(rd, state, t.early_stopping_patience)
    if t.freeze_encoder_steps:
        callbacks.append(_encoder_freeze(t.freeze_encoder_steps))
    state["status"] = "running"
    try:
        model.fit(train_ds, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch, initial_epoch=initial_epoch,
                  validation_data=val_ds, callbacks=callbacks, shuffle=False, verbose=fit_verbosity(progress))
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


def run_experiment(config: ExperimentConfig | str | Path | None = None, *, overrides=(), run_dir=None,
                   resume=None, progress: bool = True) -> Path:
    """Train one model from a config and return its run directory.

    The story of a run: reopen it (``resume``) or start it (config, data, where it goes); write its
    config, meta and state; load the data; set the precision; build the model (or load the last
    checkpoint); fit; record how it ended.

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
    import shutil
    import tempfile

    import keras

    if resume is not None:
        run_dir = Path(resume)
        config, meta, state = _reopen(run_dir)
        if state is None:
            return run_dir
    elif not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides)
    data = resolve_data(config)
    strategy = _strategy(config.train.strategy)  # fails early (e.g. no TF_CONFIG), before any file is written
    chief = _is_chief(strategy)
    if resume is None:
        run_dir, meta, state = _new_run(config, data, run_dir, chief)
    elif meta.get("manifest_sha256") != data.manifest_sha256:
        logger.warning("the manifest changed since %s was started", run_dir)

    # only the chief writes the run directory; other workers of a cluster save (saving takes every
    # worker) into a temporary directory of their own, removed at the end
    rd = RunDir(run_dir if chief else tempfile.mkdtemp(prefix="unetflow-worker-"))
    if resume is None:
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.write_config(config)
        rd.write_json(rd.MODEL_PARAMS, model_params(config))
        rd.write_json(rd.META, meta)
        rd.write_json(rd.STATE, state)

    train_data, val_data = _load_data(config, data, progress)
    if "train_median_diameter" not in meta:
        # the object size the network learnt: the common size training images were zoomed to, if any
        meta["train_median_diameter"] = config.augment.target_diameter or train_data.median_diameter
        rd.write_json(rd.META, meta)
    policy = resolve_mixed_precision(config.train.mixed_precision)
    if meta.get("mixed_precision", "") != policy:
        meta["mixed_precision"] = policy
        rd.write_json(rd.META, meta)
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model, initial_epoch = _model(config, run_dir, state, meta.get("init_from"))
            _freeze_encoder(model, config.train.freeze_encoder_steps)
        datasets = _datasets(strategy, train_data, val_data, config, initial_epoch)
        if config.train.strategy == "multi_worker":
            _multi_worker_fixes(model, strategy)
        _fit(model, rd, run_dir, state, config, datasets, initial_epoch, progress)
    finally:
        if policy:
            keras.mixed_precision.set_global_policy("float32")
        if not chief:
            shutil.rmtree(rd.path, ignore_errors=True)
    return run_dir
