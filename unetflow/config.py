"""Experiment configuration: YAML files loaded into dataclasses whose defaults are the only defaults.

An unknown key is an error naming the key and the file; ``base: OTHER.yaml`` (relative to the
file) starts from another config, so sibling experiments state only how they differ (the lab's
``aitslab_cells_boundary.yaml`` is ``aitslab_cells.yaml`` with ``model.task: boundary``);
``--set section.key=value`` overrides any field (the value is parsed as YAML: ``--set train.epochs=2``,
``--set augment.scale_range=[0.8,1.25]``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .augment import AugmentConfig
from .geometry import check_architecture
from .hardware import PRECISIONS
from .preprocess import InputConfig
from .tasks import TASKS, get_task

__all__ = ["ExperimentConfig", "DataConfig", "ModelConfig", "LossConfig", "TrainConfig", "load_config",
           "upgrade_flat_sections",
           "apply_overrides", "config_to_dict", "ConfigError"]


class ConfigError(ValueError):
    """Configuration problems; the message names the file and each key (``problems`` lists them)."""

    def __init__(self, source, problems=None):
        if problems is None:  # a message of its own
            super().__init__(source)
            self.problems = [str(source)]
            return
        self.problems = list(problems)
        text = self.problems[0] if len(self.problems) == 1 else \
            f"{len(self.problems)} problems:\n  - " + "\n  - ".join(self.problems)
        super().__init__(f"{source}: {text}")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from.

    Attributes
    ----------
    manifest : str or None
        Manifest CSV.  A relative path is looked for in the data folder (`root`, then
        $UNETFLOW_DATA) first, then in the current directory
        (:func:`unetflow.manifest.find_manifest`).  None, or ``"synthetic"``, uses the embedded
        synthetic nuclei set.
    root : str or None
        Data root for the manifest's paths (default: $UNETFLOW_DATA, then the manifest's folder).
    cache : str or None
        Target cache folder (default: $UNETFLOW_CACHE or ~/.cache/unetflow/targets).
    synthetic_images : int
        Size of the synthetic set, when it is used.
    max_train_images, max_val_images : int or None
        Use only the first N images of a split (quick runs and tests).
    volume_slices : bool
        The manifest lists ``(Z, Y, X)`` volumes and label volumes: train the 2-D network on their
        YX, ZY and ZX slices, resampled to isotropic voxels (Cellpose's ``make_train``;
        :func:`unetflow.volume.load_volume_training_data`).
    train_splits : tuple of str
        The manifest splits the network trains on.  ``[train, val]`` trains a final model on every
        image but the test split; the val split then still picks the checkpoint and the thresholds,
        but it is no longer held out, so report such a model on test only.
    """

    manifest: str | None = None
    root: str | None = None
    cache: str | None = None
    synthetic_images: int = 24
    max_train_images: int | None = None
    max_val_images: int | None = None
    volume_slices: bool = False
    train_splits: tuple = ("train",)

    def __post_init__(self):
        if not self.train_splits or any(s not in ("train", "val") for s in self.train_splits):
            raise ValueError(f"data.train_splits must be a non-empty list of 'train' and 'val' (the test split "
                             f"is never trained on), got {list(self.train_splits)}")


def _check_model(self):
    check_architecture(self.depth, self.base_filters, self.dropout, name="model.{}")
    try:
        get_task(self.task)
    except ValueError as exc:
        raise ValueError(f"model.task: {exc}") from None
    for name, task in TASKS.items():  # e.g. a ReLU asked for on a flow head, whose outputs must stay linear
        if name != self.task and task.head_class is not None and getattr(self, name) != task.head_class():
            raise ValueError(f"model.{name} sets head options of the {name} model, not of task {self.task!r}, "
                             "whose head is linear")


#: The network: ``task`` (the label representation, :data:`unetflow.tasks.TASKS`: target, head, loss and
#: post-processing), ``depth``, ``base_filters``, ``batch_norm`` and ``dropout`` (see
#: :func:`unetflow.models.build_unet`), and one section per task whose head has options
#: (``model.boundary.head_relu``; :attr:`unetflow.tasks.Task.head_class`).
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig", [("task", str, field(default="flow")), ("depth", int, field(default=4)),
                    ("base_filters", int, field(default=64)), ("batch_norm", bool, field(default=True)),
                    ("dropout", float, field(default=0.0))]
    + [(name, task.head_class, field(default_factory=task.head_class))
       for name, task in sorted(TASKS.items()) if task.head_class is not None],
    frozen=True, namespace={"__module__": __name__, "__post_init__": _check_model})
ModelConfig.__doc__ = ("The network: ``task``, ``depth``, ``base_filters``, ``batch_norm``, ``dropout`` and each "
                       "task's head options (``model.<task>``).")

#: Loss options of each task, one section per task (``loss.flow.flow_weight``, ``loss.boundary.class_weights``,
#: ...; :attr:`unetflow.tasks.Task.loss_class`).
LossConfig = dataclasses.make_dataclass(
    "LossConfig", [(name, task.loss_class, field(default_factory=task.loss_class))
                   for name, task in sorted(TASKS.items())], frozen=True, namespace={"__module__": __name__})
LossConfig.__doc__ = "Loss options of each task (``loss.<task>``)."


def upgrade_flat_sections(values: dict) -> dict:
    """Configs written before the loss and head options had a section per task kept them flat
    (``loss.flow_weight``, ``model.head_relu``): move each flat key into the section of every task
    that has an option of that name, unless that section sets it.  Saved runs keep loading."""
    for section, owner in (("loss", "loss_class"), ("model", "head_class")):
        flat = values.get(section)
        if not isinstance(flat, dict):
            continue
        for name, task in TASKS.items():
            options = getattr(task, owner)
            if options is None:
                continue
            known = {f.name for f in dataclasses.fields(options)}
            moved = {k: v for k, v in flat.items() if k in known}
            if moved:
                own = flat.setdefault(name, {})
                if isinstance(own, dict):
                    for k, v in moved.items():
                        own.setdefault(k, v)
        owned = {f.name for t in TASKS.values() if getattr(t, owner) for f in dataclasses.fields(getattr(t, owner))}
        for k in owned & set(flat):
            del flat[k]
    return values


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation.

    Attributes
    ----------
    epochs, steps_per_epoch, batch_size : int
    optimizer : {"rmsprop", "adam", "adamw"}
    learning_rate : float
    weight_decay : float
        AdamW only.
    warmup_steps : int
        Linear warm-up of the learning rate.
    schedule : {"constant", "cosine"}
        After warm-up: constant, or cosine decay to 0 at the last step.
    early_stopping_patience : int or None
        Epochs without validation-loss improvement before stopping; None disables it.
    val_crops : int
        Fixed (seeded, unaugmented) validation crops per epoch.
    mixed_precision : {None, "auto", "mixed_bfloat16", "mixed_float16"}
        ``"auto"``: bfloat16 where the CPU has it natively, float32 elsewhere
        (:func:`unetflow.hardware.resolve_mixed_precision`); the policy used is in the run's meta.
    strategy : {"default", "mirrored", "multi_worker"}
        ``tf.distribute`` strategy; "multi_worker" reads ``TF_CONFIG`` (or SLURM's environment),
        see docs/distributed.md.  ``batch_size`` is the global batch, split over all replicas of
        all workers; each worker draws its own share of the one seeded sample sequence, and only
        the chief writes the run directory.
    seed : int
    init_from : str or None
        Fine-tuning: start from the weights of this run directory's (or ready model's) ``best.keras``
        (same task and architecture) instead of random ones; recorded in the run's meta.
    init_channels : list or None
        When the source takes other input channels than this config (e.g. the one-channel
        ``nuclei`` model for two-channel cells): for each of this config's input channels, in
        order, the source channel whose first-layer weights it starts from (an index, or the
        source's channel name), or ``"zero"`` for a new channel that starts at zero.  ``[zero, 0]``
        starts ``[cytoplasm, nuclei]`` from a grey nuclei model with the cytoplasm at zero;
        ``[0, 0]`` copies the grey weights into both.  Only the first convolution differs; every
        other weight is carried over as it is.  Recorded in the run's meta.
    freeze_encoder_steps : int
        Fine-tuning: keep the contracting path (``down*`` layers, their batch norms in inference
        mode) fixed for the first N steps, so a new head and decoder settle before the pretrained
        features move.
    """

    epochs: int = 15
    steps_per_epoch: int = 500
    batch_size: int = 10
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "constant"
    early_stopping_patience: int | None = None
    val_crops: int = 32
    mixed_precision: str | None = None
    strategy: str = "default"
    seed: int = 0
    init_from: str | None = None
    init_channels: tuple | None = None
    freeze_encoder_steps: int = 0

    def __post_init__(self):
        checks = {"optimizer": ("rmsprop", "adam", "adamw"), "schedule": ("constant", "cosine"),
                  "strategy": ("default", "mirrored", "multi_worker"),
                  "mixed_precision": PRECISIONS}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_encoder_steps and not self.init_from:
            raise ValueError("train.freeze_encoder_steps freezes pretrained weights: it needs train.init_from")
        if self.init_channels is not None:
            if not self.init_from:
                raise ValueError("train.init_channels maps the input channels of train.init_from: it needs "
                                 "train.init_from")
            object.__setattr__(self, "init_channels", tuple(self.init_channels))
            for c in self.init_channels:
                if not (c == "zero" or (isinstance(c, int) and c >= 0) or isinstance(c, str)):
                    raise ValueError(f"train.init_channels entries are a source channel (index or name) or "
                                     f"'zero', got {c!r}")
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"train.freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")


#: Post-processing of each task's outputs, one field per task (``postprocess.flow``, ...) holding
#: the task's options dataclass (thresholds tuned by ``unetflow evaluate`` override these).
PostprocessSection = dataclasses.make_dataclass(
    "PostprocessSection", [(name, task.postprocess_class, field(default_factory=task.postprocess_class))
                           for name, task in sorted(TASKS.items())], frozen=True,
    namespace={"__module__": __name__})
PostprocessSection.__doc__ = "Post-processing options of each task (``postprocess.<task>``)."


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: one run directory."""

    name: str = "experiment"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessSection = field(default_factory=PostprocessSection)

    def __post_init__(self):
        if get_task(self.model.task).spatial_dims == 3:
            if self.augment.target_diameter:
                raise ValueError(f"augment.target_diameter must be null for the 3-D task {self.model.task!r}: volumes "
                                 "are trained and segmented at their own scale, resampled to isotropic voxels")
            if self.data.volume_slices:
                raise ValueError(f"data.volume_slices trains a 2-D network on slices; model.task {self.model.task!r} "
                                 "trains on the volumes themselves")


def _build(cls, values, where: str, source):
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclasses.  The problems
    of all sections are collected and raised together (one :class:`ConfigError` listing them), so
    a user fixes a config in one round."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(source, [f"`{where or 'top level'}` must be a mapping, got {type(values).__name__}"])
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs, problems = {}, []
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            problems.append(f"unknown key `{path}` (known in `{where or 'top level'}`: {', '.join(sorted(known))})")
            continue
        default = known[key].default_factory() if known[key].default_factory is not dataclasses.MISSING \
            else known[key].default
        if dataclasses.is_dataclass(default):
            try:
                kwargs[key] = _build(type(default), value, path, source)
            except ConfigError as exc:
                problems += exc.problems
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    if not problems:
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            problems.append(f"in `{where or 'top level'}`: {exc}")
    raise ConfigError(source, problems)


def config_to_dict(config) -> dict:
    """Plain nested dict (tuples as lists), suitable for YAML."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict, overrides, source="--set") -> dict:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML)."""
    values = yaml.safe_load(yaml.safe_dump(values)) or {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: `{key}`: `{p}` is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def _merge(base: dict, values: dict) -> dict:
    """`values` over `base`, section by section."""
    out = dict(base)
    for key, value in values.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path, seen=()) -> dict:
    """A config file's values, on top of its ``base`` config's (recursively)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: experiment config not found" + (f" (the base of {seen[-1]})" if seen else ""))
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be the path of another config, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: `base` {base} leads back to itself")
    return _merge(_read_yaml(base_path, (*seen, path.resolve())), values)


def load_config(path=None, overrides=()) -> ExperimentConfig:
    """Load an experiment YAML (or only defaults when `path` is None) with overrides applied.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        On unknown keys (naming the key and the file), wrong types or values.
    """
    values, source = {}, "defaults"
    if path is not None:
        values, source = _read_yaml(Path(path)), str(path)
    values = upgrade_flat_sections(apply_overrides(values, overrides))
    src = source if not overrides else f"{source} (with --set {' '.join(overrides)})"
    return _build(ExperimentConfig, values, "", src)
