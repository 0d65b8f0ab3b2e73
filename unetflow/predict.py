"""Prediction: tiled network outputs over images of any size, then one post-processing pass.

The network runs on tiles (most images are one tile of at most ``DEFAULT_TILE`` px a side; larger
ones overlap by at least the network's receptive radius) whose outputs are blended with tapered
weights (in the form the task blends: logits and flows as they are, class probabilities for the
boundary model); the outputs are stitched for the whole image first and post-processed once, so an
object crossing a tile border stays one object.  Optional test-time flips are un-flipped by the task
(for flows, negating the component the flip reversed).

Images stream through :func:`predict_raw_many`: tiles of one shape from consecutive images share
network calls, and :func:`segment_images` overlaps reading and post-processing with the network.
"""
from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .conventions import DEFAULT_TILE
from .preprocess import prepare_image
from .rundir import RunDir, read_run
from .sizing import check_diameter, choose_sizing, default_sizing, require_train_diameter, resolve_size
from .tasks import get_task

__all__ = ["Run", "load_run", "predict_raw", "predict_rescaled", "predict_raw_many", "predict_instances", "tile_layout",
           "raw_to_labels", "segment_images"]

logger = logging.getLogger(__name__)


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
        return choose_sizing(diameter, self.config, self.train_diameter, self.path, words)

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


def tile_layout(length: int, tile: int, margin: int, multiple: int = 1):
    """Tiles along one axis: the fewest tiles of at most `tile` px that cover `length` (a multiple of
    `multiple`) with at least `margin` px of overlap, all of one size (a multiple of `multiple`),
    starting at multiples of `multiple`.

    Returns ``(starts, size)``.  Shrinking the tiles to fit, instead of sliding tiles of one size,
    keeps the computed area close to the image's: a 360 px side is one tile of 360 (not two of 256),
    a 1000 px side three tiles of 384 with 512 px tiles.
    """
    if length <= tile:
        return [0], length
    margin += multiple  # room for rounding the starts onto the pooling grid
    n = int(np.ceil((length - margin) / (tile - margin)))
    size = int(np.ceil((length + (n - 1) * margin) / n))
    size = -(-size // multiple) * multiple
    # starts on the pooling grid (multiples of `multiple`): a U-Net is shift-equivariant only for
    # such shifts, so a tile then computes exactly what the whole image would away from its edges
    starts = (np.linspace(0, length - size, n) / multiple).round().astype(int) * multiple
    return [int(v) for v in starts], size


def _taper(n: int, ramp: int) -> np.ndarray:
    """1-D blending weights: 1 in the middle, falling linearly over `ramp` pixels towards the ends."""
    x = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(x + 1, n - x) / max(ramp, 1), 1e-3, 1.0)


_FORWARD = weakref.WeakKeyDictionary()


def _forward(model):
    """The network as a function of a batch ``(N, H, W, C)`` -> numpy outputs.

    For a Keras model, one ``tf.function`` whose input signature leaves the batch and image sizes
    open: traced once, whatever the sizes (``predict_on_batch`` retraces for new shapes and adds its
    own bookkeeping to every call).  Other objects (test doubles) are called by ``predict_on_batch``.
    """
    import keras

    if not isinstance(model, keras.Model):
        return model.predict_on_batch
    if model not in _FORWARD:
        import tensorflow as tf

        spec = tf.TensorSpec([None, None, None, model.inputs[0].shape[-1]], tf.float32)
        ref = weakref.ref(model)  # the cached function must not keep its model (the cache's key) alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
    fn = _FORWARD[model]
    return lambda batch: fn(batch).numpy()


class _Tiling:
    """One (possibly flipped) image, padded to the network's multiple, cut into tiles of one size,
    and the blended outputs of the tiles done so far."""

    def __init__(self, image, tile, overlap, mult, channels):
        from .geometry import receptive_radius

        H, W = image.shape[:2]
        self.shape = (H, W)
        # pad to a multiple the network accepts (reflecting, so objects at the edge look natural)
        Hp, Wp = -(-H // mult) * mult, -(-W // mult) * mult
        mode = "reflect" if min(H, W) > 1 and Hp - H < H and Wp - W < W else "edge"
        self.image = np.pad(image, ((0, Hp - H), (0, Wp - W), (0, 0)), mode=mode) if (Hp, Wp) != (H, W) else image
        tile = max(mult, tile // mult * mult)
        # tiles overlap by `overlap` x `tile` px, and at least by the network's receptive radius, so
        # every output pixel blended with weight near 1 saw its whole context
        margin = min(tile // 2, max(int(tile * overlap), receptive_radius(mult)))
        ys, th = tile_layout(Hp, tile, margin, mult)
        xs, tw = tile_layout(Wp, tile, margin, mult)
        self.tile_shape = (th, tw)
        self.coords = [(y, x) for y in ys for x in xs]
        self.left = len(self.coords)
        if self.left == 1:  # the whole image in one tile: no blending
            self.weight = self.out = self.norm = None
        else:
            self.weight = np.outer(_taper(th, margin) if len(ys) > 1 else np.ones(th, np.float32),
                                   _taper(tw, margin) if len(xs) > 1 else np.ones(tw, np.float32))[..., None]
            self.out = np.zeros((Hp, Wp, channels), np.float32)
            self.norm = np.zeros((Hp, Wp, 1), np.float32)

    def crop(self, y, x):
        th, tw = self.tile_shape
        return self.image[y:y + th, x:x + tw]

    def add(self, y, x, pred):
        self.left -= 1
        if self.weight is None:
            self.out = pred
            return
        th, tw = self.tile_shape
        self.out[y:y + th, x:x + tw] += pred * self.weight
        self.norm[y:y + th, x:x + tw] += self.weight

    def result(self):
        H, W = self.shape
        return (self.out if self.norm is None else self.out / self.norm)[:H, :W]


class _Job:
    """One image through the network: zoomed by `factor`, its test-time flips, their tiles; the
    result is the flips' un-flipped mean, resized back to the image's size."""

    def __init__(self, image, factor, task, tta, tile, overlap, mult):
        self.task = task
        self.size = image.shape[:2]
        if abs(factor - 1) > 0.05:  # within 5 % of 1 the image is used as it is
            from skimage.transform import rescale

            image = rescale(image, factor, order=1, channel_axis=-1, preserve_range=True,
                            anti_aliasing=False).astype(np.float32)
        self.flips = [(fy, fx) for fy in (False, True) for fx in (False, True)] if tta else [(False, False)]
        self.variants = []
        for fy, fx in self.flips:
            v = image[::-1] if fy else image
            v = v[:, ::-1] if fx else v
            self.variants.append(_Tiling(np.ascontiguousarray(v), tile, overlap, mult, task.channels))

    @property
    def done(self) -> bool:
        return all(v.left == 0 for v in self.variants)

    def result(self) -> np.ndarray:
        raw = sum(self.task.unflip(v.result(), fy, fx) for v, (fy, fx) in zip(self.variants, self.flips))
        raw = raw / len(self.variants) if len(self.variants) > 1 else raw
        if raw.shape[:2] != self.size:
            from skimage.transform import resize

            raw = resize(raw, self.size + (raw.shape[-1],), order=1, preserve_range=True,
                         anti_aliasing=False).astype(np.float32)
        return raw


#: Images in flight at most while their tiles wait to share network calls with later images' tiles.
LOOKAHEAD = 8


def check_tile_size(tile_size, multiple: int) -> int:
    """`tile_size` as an int, or a ValueError naming it: tiles hold at least 4 input multiples of the
    network (half of a tile may be overlap, and each tile is a multiple of the network's)."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 4 * multiple:
        raise ValueError(f"`tile_size` must be an integer of at least {4 * multiple} px for this network (4 x its "
                         f"input multiple {multiple}), got {tile_size!r}")
    return int(tile_size)


def predict_raw_many(model, items, *, task, tile_size: int = DEFAULT_TILE, overlap: float = 0.1,
                     batch_size: int = 8, tta: bool = False, input_multiple: int | None = None,
                     lookahead: int = LOOKAHEAD):
    """Network outputs for a stream of prepared images, in order; tiles of one shape from
    consecutive images share network calls.

    Parameters
    ----------
    items : iterable of (image, factor)
        Prepared ``(H, W, C)`` images and the zoom to run each at (see :func:`predict_rescaled`).
        Consumed lazily: an image is read only when the network is ready for it.
    tile_size, overlap, batch_size, tta, input_multiple
        As :func:`predict_raw`; `batch_size` is the number of 256² tiles' worth of pixels per call.
    lookahead : int
        Images in flight at most (bounds the memory).

    Yields
    ------
    raw : (H, W, channels) float32 array
        One per item, as :func:`predict_rescaled` returns it.
    """
    from .models import input_multiple as read_multiple

    task = get_task(task)
    mult = input_multiple or read_multiple(model)
    check_tile_size(tile_size, mult)
    forward = _forward(model)
    jobs, queues = deque(), {}  # tile shape -> tiles waiting for the network, oldest first

    def per_call(shape):  # about as many pixels per network call whatever the tile size (memory)
        return max(1, min(batch_size, batch_size * 256 * 256 // (shape[0] * shape[1])))

    def run(shape):
        queue = queues[shape]
        chunk = [queue.popleft() for _ in range(min(per_call(shape), len(queue)))]
        pred = task.blendable(np.asarray(forward(np.stack([t.crop(y, x) for t, y, x in chunk])), np.float32))
        for (tiling, y, x), p in zip(chunk, pred):
            tiling.add(y, x, p)

    for image, factor in items:
        job = _Job(np.asarray(image, np.float32), factor, task, tta, tile_size, overlap, mult)
        jobs.append(job)
        for tiling in job.variants:
            queues.setdefault(tiling.tile_shape, deque()).extend((tiling, y, x) for y, x in tiling.coords)
        for shape, queue in queues.items():
            while len(queue) >= per_call(shape):
                run(shape)
        while len(jobs) > lookahead:  # finish the oldest image, with whatever tiles share its calls
            for tiling in jobs[0].variants:
                while tiling.left:
                    run(tiling.tile_shape)
            yield jobs.popleft().result()
        while jobs and jobs[0].done:
            yield jobs.popleft().result()
    for shape, queue in queues.items():
        while queue:
            run(shape)
    while jobs:
        yield jobs.popleft().result()


def predict_raw(model, image, *, task, tile_size: int = DEFAULT_TILE, overlap: float = 0.1, batch_size: int = 8,
                tta: bool = False, input_multiple: int | None = None) -> np.ndarray:
    """Network outputs for a prepared ``(H, W, C)`` image, tiled and blended.

    Returns ``(H, W, channels)`` in the task's blending form: ``[dy, dx, cellprob_logit]`` (flow),
    class probabilities (boundary), ``[distance, cellprob_logit]`` (distance).  Tiles are at most
    `tile_size` px a side, the fewest that cover the image with the network's receptive radius
    (and at least `overlap` x `tile_size`) as overlap; an image that fits is one tile.  With `tta`,
    the mean over the image and its three flips, each output un-flipped by the task.
    `input_multiple`: input sizes the network accepts are multiples of this (a run's
    ``model.json`` records it; by default it is read from the model's pooling layers).
    """
    return predict_rescaled(model, image, task=task, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                            tta=tta, input_multiple=input_multiple)


def predict_rescaled(model, x, *, task: str, factor: float = 1.0, **kwargs) -> np.ndarray:
    """:func:`predict_raw` on `x` zoomed by `factor`, the outputs resized back to the size of `x`.

    `factor` is the training median diameter over the image's: objects are brought to the size the
    network was trained on.  Within 5 % of 1 the image is used as it is.
    """
    return next(predict_raw_many(model, [(x, factor)], task=task, **kwargs))


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
        Median object diameter in this image (pixels), ``"auto"`` to estimate it from the image
        (:func:`unetflow.sizing.estimate_diameter`) or ``"native"`` for no zoom.  With the training
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
        model, task, input_config, multiple = run.model, run.task, run.config.input, run.input_multiple
        diameter = run.sizing(diameter)
        train_diameter = train_diameter or run.train_diameter
        pp = run.postprocess_config(**postprocess)
    else:
        from .tasks import TASKS
        model, multiple = model_or_run, None
        if task not in TASKS:
            raise ValueError(f"with a bare Keras model, give `task`, one of {sorted(TASKS)}; got {task!r}")
        diameter = check_diameter(diameter)
        diameter = "native" if diameter is None else diameter
        if diameter != "native":
            require_train_diameter(train_diameter, "a bare Keras model without `train_diameter`")
        pp = get_task(task).postprocess_class().with_overrides(**postprocess)
    x = prepare_image(image, input_config, input_stats) if input_config is not None else np.asarray(image, np.float32)
    x = _network_input(x, model)
    diameter, factor = resolve_size(model, x, diameter, task=task, train_diameter=train_diameter, postprocess=pp)
    raw = predict_rescaled(model, x, task=task, factor=factor, tile_size=tile_size, overlap=overlap,
                           batch_size=batch_size, tta=tta, input_multiple=multiple)
    return raw_to_labels(raw, task, pp), _outputs(task, raw, diameter)


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
    from concurrent.futures import ThreadPoolExecutor

    from .io import read_ahead, read_image

    diameter = run.sizing(diameter)
    pp = run.postprocess_config(**postprocess)
    started, failed = deque(), deque()  # (path, diameter) of the images in the network; errors to report

    def prepared(path):
        return _network_input(prepare_image(read_image(path), run.config.input), run.model)

    def items():
        for path, x in read_ahead(prepared, [Path(p) for p in paths]):
            if isinstance(x, Exception):
                failed.append((path, x))
                continue
            try:
                d, factor = resolve_size(run.model, x, diameter, task=run.task, train_diameter=run.train_diameter,
                                         postprocess=pp)
            except ValueError as exc:
                failed.append((path, exc))
                continue
            started.append((path, d))
            yield x, factor

    def finish(path, d, raw, labels):
        try:
            return path, labels.result(), _outputs(run.task, raw, d)
        except (OSError, ValueError) as exc:
            return path, exc

    with ThreadPoolExecutor(1, thread_name_prefix="unetflow-postprocess") as pool:
        waiting = deque()
        for raw in predict_raw_many(run.model, items(), task=run.task, tile_size=tile_size, overlap=overlap,
                                    batch_size=batch_size, tta=tta, input_multiple=run.input_multiple):
            path, d = started.popleft()
            waiting.append((path, d, raw, pool.submit(raw_to_labels, raw, run.task, pp)))
            while failed:
                yield failed.popleft()
            while len(waiting) > 1 or (waiting and waiting[0][3].done()):
                yield finish(*waiting.popleft())
        while failed:
            yield failed.popleft()
        while waiting:
            yield finish(*waiting.popleft())
