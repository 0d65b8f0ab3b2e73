"""The shared tf.data pipeline: one loader for every model, the task picks the target.

Images are read and normalised once (:func:`unetflow.preprocess.prepare_image`) and targets come
from the precomputed cache (:mod:`unetflow.precompute`; missing entries are computed before
training starts, with a progress bar, never inside the training loop).  Each training element
``i`` is drawn with its own ``numpy.random.Generator`` seeded by ``(seed, i)``, so a run is
reproducible whatever the number of parallel map calls.

The target of a crop is the task's (:meth:`unetflow.tasks.Task.target`), e.g. ``[dy, dx, cellprob]``
with unit flows for ``"flow"`` (the loss scales them by ``FLOW_SCALE``), one-hot background /
interior / boundary for ``"boundary"``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .augment import AugmentConfig, apply_transform, base_zoom, random_transform, sample_crop
from .conventions import flows_to_channels_last
from .flows import diameters
from .io import read_image
from .precompute import TargetCache
from .preprocess import InputConfig, prepare_image
from .tasks import array_kinds, get_task

__all__ = ["TrainingData", "training_item", "load_training_data", "make_dataset", "make_target"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Normalised images and their targets in memory, one dict per image (see :func:`sample_crop`)."""

    items: list
    names: list

    def __len__(self):
        return len(self.items)

    @property
    def median_diameter(self) -> float:
        """Median over images of the median object diameter (px), for rescaling at prediction."""
        d = [it["diameter"] for it in self.items if it["diameter"] > 0]
        return float(np.median(d)) if d else 0.0


def training_item(image, targets: dict, kinds=None) -> dict:
    """One training image's dict: the prepared image, its task targets (vectors moved from the
    cache's ``(2, H, W)`` to channels-last, as crops take them) and its median object diameter."""
    kinds = kinds if kinds is not None else array_kinds()
    item = {k: flows_to_channels_last(a) if kinds[k] == "vector" else a for k, a in targets.items() if k != "labels"}
    return {"image": image, **item, "diameter": diameters(targets["labels"])}


def load_training_data(images, label_paths, cache: TargetCache, input_config: InputConfig = InputConfig(),
                       names=None, progress: bool = True) -> TrainingData:
    """Read and normalise images and load their cached targets (computing missing ones first).

    Parameters
    ----------
    images : sequence of path or array
    label_paths : sequence of path
        Label files; their targets come from `cache`.
    cache : TargetCache
    input_config : InputConfig
    """
    from .progress import progress_bar

    items, kinds = [], array_kinds()
    for img, lab in progress_bar(list(zip(images, label_paths)), desc="load images and targets", unit="img",
                                 enabled=progress):
        raw = read_image(img) if not isinstance(img, np.ndarray) else img
        image = prepare_image(raw, input_config)
        t = cache.load(lab)
        if t["labels"].shape != image.shape[:2]:
            raise ValueError(f"{lab}: label shape {t['labels'].shape} differs from image {img} shape {image.shape[:2]}")
        items.append(training_item(image, t, kinds))
    return TrainingData(items, list(names) if names is not None else [str(p) for p in label_paths])


def make_target(crop: dict, task) -> np.ndarray:
    """The model target of a crop for a task (name or :class:`unetflow.tasks.Task`)."""
    return get_task(task).target(crop)


def _crops_fn(data: TrainingData, task, config: AugmentConfig, seed: int, augment: bool):
    no_aug = AugmentConfig(crop_size=config.crop_size, flips=False, rot90=False, object_crop_tries=config.object_crop_tries,
                           min_object_fraction=config.min_object_fraction, target_diameter=config.target_diameter)

    def make(i):
        rng = np.random.default_rng([seed, int(i)])
        item = data.items[rng.integers(len(data))]
        arrays = {k: item[k] for k in ("image", *task.kinds)}
        if task.spatial_dims == 3:
            from .volume import sample_volume_crop

            crop = sample_volume_crop(rng, arrays, config, augment)
            return crop["image"].astype(np.float32), task.target(crop)
        zoom = base_zoom(item["diameter"], config)
        if augment:
            crop = sample_crop(rng, arrays, config, zoom)
        else:
            weight = item["cellprob"] > 0
            crop = apply_transform(arrays, random_transform(rng, item["image"].shape[:2], no_aug, weight, zoom))
        return crop["image"].astype(np.float32), task.target(crop)

    return make


def make_dataset(data: TrainingData, task: str, config: AugmentConfig = AugmentConfig(), *, batch_size: int = 8,
                 seed: int = 0, augment: bool = True, n_samples: int | None = None, start: int = 0,
                 shard: tuple = (0, 1)):
    """A batched ``tf.data.Dataset`` of ``(image, target)`` training crops (cubes of volumes for a
    3-D task, :func:`unetflow.volume.sample_volume_crop`).

    Parameters
    ----------
    data : TrainingData
    task : str or Task
        A name of :data:`unetflow.tasks.TASKS`.
    config : AugmentConfig
    batch_size : int
    seed : int
        Element ``i`` is drawn by ``numpy.random.default_rng([seed, i])``.
    augment : bool
        False gives plain random crops (used for the validation set).
    n_samples : int, optional
        Number of crops; infinite (repeating) when None.
    start : int
        Index of the first element (a resumed run continues the sequence where it stopped).
    shard : (int, int)
        ``(i, n)``: only the elements whose index is ``i`` modulo ``n`` (worker ``i`` of ``n`` in
        multi-worker training draws its own share of the one sequence).
    """
    import tensorflow as tf

    task = get_task(task)
    if len(data) == 0:
        raise ValueError("no training images")
    channels = data.items[0]["image"].shape[-1]
    make = _crops_fn(data, task, config, seed, augment)
    size = config.crop_size

    def load(i):
        image, target = tf.numpy_function(make, [i], (tf.float32, tf.float32), stateful=False)
        image.set_shape((size,) * task.spatial_dims + (channels,))
        target.set_shape((size,) * task.spatial_dims + (task.channels,))
        return image, target

    idx = tf.data.Dataset.range(start, n_samples if n_samples is not None else 2 ** 62)
    if shard[1] > 1:
        idx = idx.shard(shard[1], shard[0])
    ds = idx.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=n_samples is None).prefetch(tf.data.AUTOTUNE)
