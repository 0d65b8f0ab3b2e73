"""The network over images of any size: tiles, their blending, and batched calls.

The network runs on tiles (most images are one tile of at most ``DEFAULT_TILE`` px a side; larger
ones overlap by at least the network's receptive radius) whose outputs are blended with tapered
weights (in the form the task blends: logits and flows as they are, class probabilities for the
boundary model); the outputs are stitched for the whole image, so an object crossing a tile border
stays one object once post-processed.  Optional test-time flips are un-flipped by the task (for
flows, negating the component the flip reversed).  Images stream through :func:`predict_raw_many`:
tiles of one shape from consecutive images share network calls.
"""
from __future__ import annotations

import logging
import weakref
from collections import deque

import numpy as np

from .conventions import DEFAULT_TILE
from .tasks import get_task

__all__ = ["tile_layout", "taper", "forward", "check_tile_size", "predict_raw_many", "predict_raw", "predict_rescaled", "LOOKAHEAD"]

logger = logging.getLogger(__name__)


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


def taper(n: int, ramp: int) -> np.ndarray:
    """1-D blending weights: 1 in the middle, falling linearly over `ramp` pixels towards the ends."""
    x = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(x + 1, n - x) / max(ramp, 1), 1e-3, 1.0)


_FORWARD = weakref.WeakKeyDictionary()


def forward(model):
    """The network as a function of a batch ``(N, H, W, C)`` (``(N, Z, Y, X, C)`` for a 3-D one) -> numpy outputs.

    For a Keras model, one ``tf.function`` whose input signature leaves the batch and image sizes
    open: traced once, whatever the sizes (``predict_on_batch`` retraces for new shapes and adds its
    own bookkeeping to every call).  Other objects (test doubles) are called by ``predict_on_batch``.
    """
    import keras

    if not isinstance(model, keras.Model):
        return model.predict_on_batch
    if model not in _FORWARD:
        import tensorflow as tf

        shape = model.inputs[0].shape
        spec = tf.TensorSpec([None] * (len(shape) - 1) + [shape[-1]], tf.float32)
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
            self.weight = np.outer(taper(th, margin) if len(ys) > 1 else np.ones(th, np.float32),
                                   taper(tw, margin) if len(xs) > 1 else np.ones(tw, np.float32))[..., None]
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


class Finished:
    """An item of :func:`predict_raw_many` whose outputs were computed before (the segmentation
    that sizing kept, :func:`unetflow.sizing.auto_size`): passed through in order."""

    variants, done = (), True

    def __init__(self, raw):
        self.raw = raw

    def result(self) -> np.ndarray:
        return self.raw


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
    items : iterable of (image, factor) or :class:`Finished`
        Prepared ``(H, W, C)`` images and the zoom to run each at (see :func:`predict_rescaled`),
        or outputs already computed.  Consumed lazily: an image is read only when the network is
        ready for it.
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
    network = forward(model)
    jobs, queues = deque(), {}  # tile shape -> tiles waiting for the network, oldest first

    def per_call(shape):  # about as many pixels per network call whatever the tile size (memory)
        return max(1, min(batch_size, batch_size * 256 * 256 // (shape[0] * shape[1])))

    def run(shape):
        queue = queues[shape]
        chunk = [queue.popleft() for _ in range(min(per_call(shape), len(queue)))]
        pred = task.blendable(np.asarray(network(np.stack([t.crop(y, x) for t, y, x in chunk])), np.float32))
        for (tiling, y, x), p in zip(chunk, pred):
            tiling.add(y, x, p)

    for item in items:
        job = item if isinstance(item, Finished) else _Job(np.asarray(item[0], np.float32), item[1], task, tta,
                                                           tile_size, overlap, mult)
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
