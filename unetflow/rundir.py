"""The layout of a run directory, in one place.  Nothing else spells a run's file names.

::

    config.yaml            the fully resolved experiment config
    meta.json              package version, git commit, manifest hash, TensorFlow/Keras versions,
                           training object size, mixed-precision policy
    model.json             the network's hyper-parameters (task, channels, depth, width, input multiple)
    state.json             epochs done, best validation loss, history, status
    best.keras             the model with the lowest validation loss
    last.keras             the last completed epoch, with the optimizer state (for --resume)
    history.csv            one row per epoch
    training_curves.png
    tensorboard/           TensorBoard logs
    thresholds.json        post-processing thresholds tuned on the validation split
    eval_<split>[_tta][_auto|_native|_manifest][_<tag>]/
        summary.json, per_image.csv, labels/<image>.tif, raw/<image>.npz

Every file is written under a temporary name and renamed (:func:`unetflow.io.atomic_write`).

Ready models ship inside the package as slim run directories (``unetflow/pretrained/<name>/``: the
inference-only model, config, meta, thresholds and the test scores); a run "directory" that is one
of their names, :func:`pretrained`, and not a run directory of the user's, means that model.
"""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write

__all__ = ["RunDir", "read_run", "model_params", "pretrained", "PRETRAINED_DIR"]

#: Where the ready models live.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def pretrained() -> list:
    """The names of the ready models shipped with the package (e.g. ``["nuclei"]``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.yaml").is_file()) \
        if PRETRAINED_DIR.is_dir() else []


class RunDir:
    """A run directory: where each of its files lives, and reading and writing them.

    Parameters
    ----------
    path : str or Path

    Examples
    --------
    >>> run = RunDir("runs/dsb2018_flow")
    >>> run.model_file("best").name, run.eval_dir("test", sizing="auto", tag="zoom2").name
    ('best.keras', 'eval_test_auto_zoom2')
    """

    CONFIG = "config.yaml"
    META = "meta.json"
    MODEL_PARAMS = "model.json"
    STATE = "state.json"
    HISTORY = "history.csv"
    CURVES = "training_curves.png"
    TENSORBOARD = "tensorboard"
    THRESHOLDS = "thresholds.json"
    SUMMARY = "summary.json"
    PER_IMAGE = "per_image.csv"
    #: The files every complete run directory has from the start.
    REQUIRED = (CONFIG, META, STATE)

    def __init__(self, path):
        path = Path(path)
        if not (path / self.CONFIG).is_file() and str(path) in pretrained():
            path = PRETRAINED_DIR / str(path)  # a ready model's name
        self.path = path

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name):
        return self.path / name

    # ---------------------------------------------------------------- where
    def model_file(self, which: str = "best") -> Path:
        """``best.keras`` or ``last.keras``."""
        if which not in ("best", "last"):
            raise ValueError(f"`which` must be 'best' or 'last', got {which!r}")
        return self.path / f"{which}.keras"

    def eval_dir(self, split: str, *, tta: bool = False, volumes: str = "", sizing: str = "", tag: str = "") -> Path:
        """``eval_<split>[_tta][_<volumes>][_<sizing>][_<tag>]/``; `volumes` is "" (2-D images), "3d" or
        "stitch"; `sizing` is "" (the run's own), "auto", "native" or "manifest"."""
        parts = [f"eval_{split}"] + (["tta"] if tta else []) + [p for p in (volumes, sizing, tag) if p]
        return self.path / "_".join(parts)

    def eval_labels(self, split: str, name: str, **kw) -> Path:
        """The predicted label image of image `name` in an evaluation folder."""
        return self.eval_dir(split, **kw) / "labels" / f"{name}.tif"

    def eval_raw(self, split: str, name: str, **kw) -> Path:
        """The raw network outputs (npz, key ``raw``) kept for image `name` in an evaluation folder."""
        return self.eval_dir(split, **kw) / "raw" / f"{name}.npz"

    # ---------------------------------------------------------------- read
    def check(self) -> None:
        """Raise FileNotFoundError naming what is missing, unless this is a complete run directory."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: run directory not found (ready models: "
                                    f"{', '.join(pretrained()) or 'none installed'})")
        missing = [f for f in self.REQUIRED if not (self.path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: not a complete unetflow run directory (missing {', '.join(missing)})")

    def read_json(self, name: str, default=None):
        """A JSON file of the run (`default` when it does not exist and a default is given)."""
        path = self.path / name
        if default is not None and not path.is_file():
            return default
        return json.loads(path.read_text())

    def read_config(self):
        from .config import load_config

        return load_config(self.path / self.CONFIG)

    def model_params(self, config=None) -> dict:
        """The network's hyper-parameters: ``model.json``, or (runs made before it existed) the config's."""
        path = self.path / self.MODEL_PARAMS
        if path.is_file():
            return json.loads(path.read_text())
        return model_params(config or self.read_config())

    def thresholds(self) -> dict:
        """The tuned post-processing overrides (empty when not tuned)."""
        return self.read_json(self.THRESHOLDS, {}).get("postprocess", {})

    def eval_summary(self, split: str, **kw) -> dict:
        path = self.eval_dir(split, **kw) / self.SUMMARY
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no evaluation; run `unetflow evaluate {self.path} --split {split}`")
        return json.loads(path.read_text())

    def eval_table(self, split: str, **kw):
        import pandas as pd

        return pd.read_csv(self.eval_dir(split, **kw) / self.PER_IMAGE)

    # ---------------------------------------------------------------- write
    def write_json(self, name: str, obj) -> None:
        atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str)))

    def write_config(self, config) -> None:
        import yaml

        from .config import config_to_dict

        atomic_write(self.path / self.CONFIG,
                     lambda tmp: Path(tmp).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False)))


def read_run(run_dir) -> tuple:
    """The config, meta and state of a run directory, with clear errors for missing files."""
    rd = RunDir(run_dir)
    rd.check()
    return rd.read_config(), rd.read_json(rd.META), rd.read_json(rd.STATE)


def model_params(config) -> dict:
    """The hyper-parameters of the network an experiment config builds (what ``model.json`` holds)."""
    from dataclasses import asdict

    from .geometry import min_input_multiple
    from .tasks import get_task

    m = config.model
    return {**asdict(m), "input_channels": config.input.channels, "output_channels": get_task(m.task).channels,
            "input_multiple": min_input_multiple(m.depth)}
