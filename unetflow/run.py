"""A trained run in memory: its config, network, meta, tuned thresholds and how it sizes images.

:func:`load_run` reads a run directory (:class:`unetflow.rundir.RunDir`, or a ready model's name) into
a :class:`Run`, the object every prediction entry point takes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .rundir import RunDir, read_run
from .sizing import choose_sizing, default_sizing

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A trained run: its config, model and post-processing settings."""

    path: Path | None
    config: object
    model: object
    meta: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.config.model.task

    @property
    def trained_on_volumes(self) -> bool:
        """Whether the run learnt from annotated volumes (a 3-D network, or a 2-D one on their
        slices): it is scored on volumes, in 3-D."""
        from .tasks import get_task

        return bool(self.config.data.volume_slices) or get_task(self.task).spatial_dims == 3

    def require_images(self) -> None:
        """Raise unless the run segments 2-D images (a 3-D network takes volumes only)."""
        from .tasks import get_task

        if get_task(self.task).spatial_dims == 3:
            raise ValueError(f"{self.path} is a 3-D network ({self.task}): it segments (Z, Y, X) volumes, with "
                             "unetflow.volume.predict_volume or `unetflow predict RUN STACK.tif --3d`")

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def input_multiple(self):
        """Input sizes the network accepts are multiples of this (from the run's ``model.json``)."""
        return self.params.get("input_multiple")

    @property
    def train_diameter(self) -> float | None:
        """The median object diameter (px) the run was trained at, or None when it is not recorded."""
        return self.meta.get("train_median_diameter")

    @property
    def default_sizing(self) -> str:
        """How the run sizes images unless told otherwise (:func:`unetflow.sizing.default_sizing`)."""
        return default_sizing(self.config)

    def sizing(self, diameter=None, words=("auto", "native")):
        """`diameter` in the vocabulary of :mod:`unetflow.sizing`, checked, None replaced by the run's
        own choice (:func:`unetflow.sizing.choose_sizing`)."""
        return choose_sizing(diameter, self.config, self.train_diameter,
                             f"{self.path} (meta.json has no train_median_diameter)", words)

    def postprocess_config(self, **overrides):
        """The run's post-processing config: config, then tuned thresholds, then `overrides`."""
        return getattr(self.config.postprocess, self.task).with_overrides(**{**self.thresholds, **overrides})


def load_run(run_dir, which: str = "best", precision: str = "auto") -> Run:
    """Load a run directory's model (``best`` or ``last``), config and tuned thresholds.

    `precision` (``float32``, ``bfloat16`` or ``auto``: bfloat16 where the CPU has it natively,
    which measured at most 0.002 AP away from float32 on the DSB test split) is what the network
    computes in, whatever it was trained with; the head stays float32.  ``unetflow evaluate``
    uses float32 unless told otherwise, so its numbers do not depend on the machine.

    Raises
    ------
    FileNotFoundError
        If the directory or one of its files is missing, naming it.
    """
    from .hardware import inference_policy
    from .models import load_model

    rd = RunDir(run_dir)
    config, meta, state = read_run(rd.path)
    if meta.get("unetflow_version") != __version__:
        warnings.warn(f"{rd.path} was made by unetflow {meta.get('unetflow_version')}, this is {__version__}; "
                      "results may differ", UserWarning, stacklevel=2)
    model_path = rd.model_file(which)
    if not model_path.is_file():
        raise FileNotFoundError(f"{rd.path}: no {model_path.name} (epochs done: {state.get('epochs_done', 0)}); "
                                "was the run trained?")
    model = load_model(model_path, inference_policy(precision))
    return Run(rd.path, config, model, meta, rd.thresholds(), rd.model_params(config))
