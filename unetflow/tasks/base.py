"""What a label representation ("task") is: the interface every task implements.

A task owns everything that differs between representations on the one shared backbone: the
target arrays made from a label image (and cached), how augmentation resamples them, the target
tensor, the head, the loss and the metrics, how tiled outputs are blended and un-flipped, the
post-processing with its tuning grid, and ``raw outputs -> labels``.  Nothing outside
:mod:`unetflow.tasks` needs to know which representations exist.
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = ["Task"]


class Task:
    """One label representation.  Subclasses set the class attributes and implement the methods.

    Attributes
    ----------
    name : str
        The ``model.task`` value of configs and the key of :data:`unetflow.tasks.TASKS`.
    spatial_dims : int
        2 for a network of images, 3 for one of volumes (trained on 3-D crops of annotated volumes).
    channels : int
        Channels of the target and of the network's output: one per name in ``channel_names``.
    kinds : dict
        The cached target arrays this task's target is made from, and how augmentation resamples
        each: ``"linear"`` (bilinear: smooth scalar maps), ``"nearest"`` (classes, masks) or
        ``"vector"`` (``(2, H, W)`` unit vectors in the cache, channels-last in crops; rotated
        with the image).
    version : str
        Bumped when :meth:`make_targets` changes its output (part of the target cache's key).
    postprocess_class : type
        The dataclass of its post-processing options (the ``postprocess.<name>`` config section).
    loss_class : type
        The dataclass of its loss options (the ``loss.<name>`` config section).
    head_class : type or None
        The dataclass of its head's options, if it has any (the ``model.<name>`` config section).
    tuning_grid : dict
        Option name -> values searched on the validation split by ``unetflow evaluate``.
    recommended : tuple of str
        ``--set`` overrides quick experiments use with this task (see :mod:`unetflow.quickstart`).
    channel_names : tuple of str
        The output channels, in order (a model package names them).
    output_doc : str
        What the outputs mean and how to turn them into instances, for people using the network
        without unetflow (an exported package's documentation).
    """

    name = ""
    spatial_dims = 2
    kinds: dict = {}
    version = "1"
    postprocess_class: type = None
    loss_class: type = None
    head_class: type = None
    tuning_grid: dict = {}
    recommended: tuple = ()
    channel_names: tuple = ()
    output_doc = ""

    @property
    def channels(self) -> int:
        """Output channels of the network (one per name in :attr:`channel_names`)."""
        return len(self.channel_names)

    def __repr__(self):
        return f"<task {self.name!r}: {self.channels} channels>"

    # ---------------------------------------------------------------- targets
    def make_targets(self, labels: np.ndarray, params) -> dict:
        """The cached arrays (keys of :attr:`kinds`) of one relabelled ``(H, W)`` label image.

        `params` is the cache's :class:`unetflow.precompute.TargetParams`.
        """
        raise NotImplementedError

    def target(self, crop: dict) -> np.ndarray:
        """The ``(H, W, channels)`` float32 training target of an augmented crop (dict of arrays)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- network
    def build_model(self, input_channels: int, model_config):
        """The Keras U-Net with this task's head (`model_config`: :class:`unetflow.config.ModelConfig`,
        whose ``model.<name>`` section holds the head's options)."""
        raise NotImplementedError

    def loss(self, options):
        """The Keras loss (`options`: an instance of :attr:`loss_class`, the ``loss.<name>`` section)."""
        raise NotImplementedError

    def metrics(self) -> list:
        """Keras training metrics."""
        return []

    # ---------------------------------------------------------------- prediction
    def blendable(self, outputs: np.ndarray) -> np.ndarray:
        """A batch of network outputs ``(N, H, W, channels)`` as the quantity tiles are averaged in."""
        return outputs

    def unflip(self, outputs: np.ndarray, flip_y: bool, flip_x: bool) -> np.ndarray:
        """Outputs of a flipped image, mapped back to the image's orientation (test-time flips)."""
        outputs = outputs[::-1] if flip_y else outputs
        return outputs[:, ::-1] if flip_x else outputs

    def to_labels(self, raw: np.ndarray, config) -> np.ndarray:
        """Instance labels from blended outputs ``(H, W, channels)`` with options `config`."""
        raise NotImplementedError

    def outputs(self, raw: np.ndarray) -> dict:
        """The blended outputs as named arrays (what ``predict_instances`` returns besides labels)."""
        return {"raw": raw}

    @property
    def has_flow_field(self) -> bool:
        """Whether the outputs carry a vector field (a ``"vector"`` target) that reports can draw."""
        return "vector" in self.kinds.values()

    def flow_field(self, raw: np.ndarray):
        """``(dP (2, H, W), cell mask (H, W))`` of outputs with a vector field (see :attr:`has_flow_field`)."""
        raise NotImplementedError(f"the {self.name} task's outputs carry no vector field")

    def package_config(self, postprocess) -> dict:
        """Entries of an exported model package's ``config`` for people who use the raw outputs
        with other software (`postprocess`: the run's post-processing options)."""
        return {}

    # ---------------------------------------------------------------- tuning
    def tune(self, raws, objective, base, progress: bool = True) -> list:
        """Score every point of :attr:`tuning_grid`: a list of ``(overrides, objective(predictions))``.

        The default post-processes every image once per grid point; tasks with an expensive shared
        first stage override this.
        """
        from ..progress import progress_bar

        points = [dict(zip(self.tuning_grid, values)) for values in itertools.product(*self.tuning_grid.values())]
        return [(p, objective([self.to_labels(r, base.with_overrides(**p)) for r in raws]))
                for p in progress_bar(points, desc=f"tune thresholds ({self.name})", enabled=progress)]
