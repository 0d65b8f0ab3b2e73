"""Prediction: a run's instances in images of any size, one at a time or a stream of files.

:func:`predict_instances` prepares an image with the run's input conventions, sizes it
(:mod:`unetflow.sizing`), runs the network over it in tiles (:mod:`unetflow.tiling`) and
post-processes the stitched outputs once; :func:`segment_images` does the same for files, reading
the next images on a background thread and post-processing each on a worker thread while the
network runs on the next.  A run is loaded by :func:`load_run` (:mod:`unetflow.run`).
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

import numpy as np

from .conventions import DEFAULT_TILE
from .preprocess import prepare_image
from .run import Run, load_run
from .sizing import choose_sizing, resolve_size
from .tasks import get_task
from .tiling import check_tile_size, predict_raw, predict_raw_many, predict_rescaled, tile_layout  # noqa: F401

__all__ = ["Run", "load_run", "predict_raw", "predict_rescaled", "predict_raw_many", "predict_instances", "tile_layout",
           "check_tile_size", "raw_to_labels", "segment_images", "segmenter"]

logger = logging.getLogger(__name__)


def _network_input(x, model) -> np.ndarray:
    """A prepared image as the network takes it: ``(H, W, C)`` with the model's channel count."""
    x = x[..., None] if x.ndim == 2 else x
    expected = model.inputs[0].shape[-1]
    if x.shape[-1] != expected:
        raise ValueError(f"`image` gives {x.shape[-1]} input channel(s) but the model expects {expected}")
    return x


def _outputs(task, raw, diameter) -> dict:
    """What :func:`predict_instances` returns beside the labels: the task's named outputs, and the
    diameter the image was sized by, if any."""
    return {**get_task(task).outputs(raw), **({"diameter": diameter} if diameter else {})}


def segmenter(model, x, **tiling):
    """``segment(factor)``: the outputs of the prepared image `x` zoomed by `factor`, with these
    tiling options (:func:`predict_rescaled`), for :func:`unetflow.sizing.auto_size` to size by."""
    return lambda factor: predict_rescaled(model, x, factor=factor, **tiling)


#: One post-processing at a time: numba's parallel kernels must not be entered from two threads at
#: once under its fallback threading layer (workqueue, without OpenMP or TBB), and two at once would
#: only share the same cores.
_POSTPROCESS_LOCK = threading.Lock()


def raw_to_labels(raw, task, config):
    """Labels from blended network outputs ``(H, W, channels)``, by the task's post-processing
    (thread-safe: concurrent calls run one after the other)."""
    with _POSTPROCESS_LOCK:
        return get_task(task).to_labels(raw, config)


def predict_instances(model_or_run, image, *, task: str | None = None, input_config=None, tile_size: int = DEFAULT_TILE,
                      overlap: float = 0.1, batch_size: int = 8, tta: bool = False, diameter: float | None = None,
                      train_diameter: float | None = None, input_stats=None, **postprocess):
    """Segment one image: labels plus the raw network outputs.

    Parameters
    ----------
    model_or_run : Run, path to a run directory, or keras.Model
        A Keras model needs `task` (and `input_config` unless the image is already prepared).
    image : (H, W) or (H, W, C) array
        The raw image (prepared with the run's input conventions).
    tile_size, overlap, batch_size : tiling of the network pass.
    tta : bool
        Test-time flips.
    diameter : float, "auto" or "native", optional
        Median object diameter in this image (pixels), ``"auto"`` to find it from the image
        (:func:`unetflow.sizing.auto_size`) or ``"native"`` for no zoom.  With the training
        diameter known (from the run, or `train_diameter`), the image is zoomed so its objects
        match the training size before the network, and the outputs are zoomed back.  None: the
        run's own choice (:attr:`Run.default_sizing`), ``"native"`` for a bare Keras model.
    input_stats : unetflow.preprocess.InputStats, optional
        Normalise with these statistics instead of the image's own (blocks of a huge image).
    **postprocess
        Overrides of the post-processing options (e.g. ``cellprob_threshold=-1``).

    Returns
    -------
    labels : (H, W) int32 array
    raw : dict
        ``flows`` (2, H, W) and ``cellprob`` (logits) for the flow task, ``probs`` (H, W, 3) for
        the boundary task; ``diameter`` when it was given or estimated.

    Raises
    ------
    ValueError
        If `diameter` is not None, a positive number, ``"auto"`` or ``"native"``, or asks for a
        zoom of a model whose training diameter is unknown.
    """
    run = model_or_run if isinstance(model_or_run, Run) else None
    if run is None and isinstance(model_or_run, (str, Path)):
        run = load_run(model_or_run)
    if run is not None:
        run.require_images()
        model, task, input_config, multiple = run.model, run.task, run.config.input, run.input_multiple
        diameter = run.sizing(diameter)
        train_diameter = train_diameter or run.train_diameter
        pp = run.postprocess_config(**postprocess)
    else:
        from .tasks import TASKS
        model, multiple = model_or_run, None
        if task not in TASKS:
            raise ValueError(f"with a bare Keras model, give `task`, one of {sorted(TASKS)}; got {task!r}")
        diameter = choose_sizing(diameter, None, train_diameter, "a bare Keras model without `train_diameter`",
                                 default="native")
        pp = get_task(task).postprocess_class().with_overrides(**postprocess)
    x = prepare_image(image, input_config, input_stats) if input_config is not None else np.asarray(image, np.float32)
    x = _network_input(x, model)
    segment = segmenter(model, x, task=task, tile_size=tile_size, overlap=overlap, batch_size=batch_size, tta=tta,
                        input_multiple=multiple)
    sized = resolve_size(model, x, diameter, task=task, train_diameter=train_diameter, postprocess=pp,
                         segment=segment)
    raw = segment(sized.factor) if sized.raw is None else sized.raw
    labels = raw_to_labels(raw, task, pp) if sized.labels is None else sized.labels
    return labels, _outputs(task, raw, sized.diameter)


def segment_images(run: Run, paths, *, diameter=None, tile_size: int = DEFAULT_TILE, overlap: float = 0.1,
                   batch_size: int = 8, tta: bool = False, **postprocess):
    """Segment image files with a run, the stages overlapped: the next images are read and
    normalised by a background thread, tiles of consecutive images share network calls, and each
    image is post-processed by a worker thread while the network runs on the next ones.

    Parameters are those of :func:`predict_instances`.

    Yields
    ------
    (path, labels, raw)
        For each image, as :func:`predict_instances` returns them (in input order);
    (path, error)
        instead, for an image that could not be read or segmented (``OSError`` or ``ValueError``);
        these may come before the results of earlier images.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from .io import read_ahead, read_image

    run.require_images()
    diameter = run.sizing(diameter)
    pp = run.postprocess_config(**postprocess)
    tiling = dict(task=run.task, tile_size=tile_size, overlap=overlap, batch_size=batch_size, tta=tta,
                  input_multiple=run.input_multiple)
    started, failed = deque(), deque()  # (path, diameter, labels) of the images in the network; errors to report

    def prepared(path):
        return _network_input(prepare_image(read_image(path), run.config.input), run.model)

    def items():
        for path, x in read_ahead(prepared, [Path(p) for p in paths]):
            if isinstance(x, Exception):
                failed.append((path, x))
                continue
            try:
                sized = resolve_size(run.model, x, diameter, task=run.task, train_diameter=run.train_diameter,
                                     postprocess=pp, segment=segmenter(run.model, x, **tiling))
            except ValueError as exc:
                failed.append((path, exc))
                continue
            started.append((path, sized.diameter, sized.labels))
            yield sized.network_item(x)

    def finish(path, d, raw, labels):
        try:
            return path, labels.result(), _outputs(run.task, raw, d)
        except (OSError, ValueError) as exc:
            return path, exc

    with ThreadPoolExecutor(1, thread_name_prefix="unetflow-postprocess") as pool:
        waiting = deque()
        for raw in predict_raw_many(run.model, items(), **tiling):
            path, d, kept = started.popleft()  # kept: the labels sizing made, if any
            if kept is None:
                labels = pool.submit(raw_to_labels, raw, run.task, pp)
            else:
                labels = Future()
                labels.set_result(kept)
            waiting.append((path, d, raw, labels))
            while failed:
                yield failed.popleft()
            while len(waiting) > 1 or (waiting and waiting[0][3].done()):
                yield finish(*waiting.popleft())
        while failed:
            yield failed.popleft()
        while waiting:
            yield finish(*waiting.popleft())
