"""Object size: how much an image is zoomed so its objects have the size the network learnt.

A run trained at one object size (``augment.target_diameter``) records it in its meta.json
(:attr:`unetflow.predict.Run.train_diameter`).  An image whose median object diameter is ``d`` px is
zoomed by ``train_diameter / d`` before the network, and the outputs are zoomed back.  Every entry
point (``predict_instances``, ``unetflow predict``, ``unetflow evaluate``, block-wise prediction)
says how ``d`` is found in one vocabulary, checked by :func:`check_diameter`:

``"auto"``
    found by the network itself: the image is segmented at the size a quick measurement gives,
    and kept when its objects have the size it was zoomed for (:func:`auto_size`; the scale
    search :func:`estimate_diameter` where there is no segmentation to keep, or it does not
    settle);
``"native"``
    no zoom: the image at its own scale;
a positive number
    the diameter in pixels, given;
``"manifest"`` (evaluation only)
    each image's ``median_object_diameter_px`` in the manifest, known from its annotations: a
    diagnostic of what object size costs;
None
    the run's own choice (:func:`default_sizing`): ``"auto"`` for a run trained at one object size
    (measured to be much better for such runs, see docs/results.md), else ``"native"``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["check_diameter", "default_sizing", "choose_sizing", "require_train_diameter", "zoom_factor", "estimate_diameter",
           "auto_size", "resolve_size", "Sizing", "SIZINGS", "SIZE_CANDIDATES", "SIZE_WINDOW", "SIZE_AGREEMENT",
           "SIZE_BELOW", "SIZE_PROBE", "SIZE_PROBE_FROM", "SIZE_PROBE_RANGE", "SIZE_SETTLED", "SIZE_PASSES", "SIZE_WHOLE"]

#: The words of the vocabulary (beside numbers and None).
SIZINGS = ("auto", "native", "manifest")


def check_diameter(diameter, *, words=("auto", "native")):
    """None, one of `words` or a positive number of pixels (as float); anything else is an error
    naming the value and what is allowed."""
    allowed = " or ".join(repr(w) for w in words)
    if diameter is None:
        return None
    if isinstance(diameter, str) and diameter.strip().lower() in SIZINGS:
        word = diameter.strip().lower()
        if word not in words:
            raise ValueError(f"`diameter` {word!r} is not available here: give a positive number of pixels or {allowed}")
        return word
    try:
        value = float(diameter)
    except (TypeError, ValueError):
        raise ValueError(f"`diameter` must be a positive number of pixels or {allowed}, got {diameter!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`diameter` must be a positive number of pixels or {allowed}, got {diameter!r}")
    return value


def default_sizing(config) -> str:
    """A run's own sizing: ``"auto"`` when its config trained at one object size, else ``"native"``."""
    return "auto" if config.augment.target_diameter else "native"


def choose_sizing(diameter, config, train_diameter, where, words=("auto", "native"), default=None):
    """`diameter` checked, None replaced by `default` (None: the run's own choice,
    :func:`default_sizing` of `config`); anything but ``"native"`` needs the training size
    (`where` names the model in the error)."""
    diameter = check_diameter(diameter, words=words)
    if diameter is None:
        diameter = default or default_sizing(config)
    if diameter != "native":
        require_train_diameter(train_diameter, where)
    return diameter


def require_train_diameter(train_diameter, where) -> float:
    """The training object size, or the one error that says zooming needs it (`where`: the run)."""
    if not train_diameter:
        raise ValueError(f"{where}: the training object size is unknown, so images cannot be zoomed to it; "
                         "use diameter 'native'")
    return float(train_diameter)


def zoom_factor(train_diameter, diameter) -> float:
    """How much an image whose objects measure `diameter` px is zoomed (1.0 for None / ``"native"``)."""
    if diameter is None or diameter == "native":
        return 1.0
    return float(train_diameter) / float(diameter)


#: Object diameters (px) the size search tries, largest first: 256 down to 4 px, a factor of 2 apart
#: (the network finds the same objects over a range of zooms wider than 2, so no plateau falls
#: between two candidates; halving the candidates halves the search's cost).
SIZE_CANDIDATES = tuple(float(4 * 2 ** k) for k in range(6, -1, -1))
#: Largest side (px, after zooming) of the one window the size search looks at per candidate.
SIZE_WINDOW = 256
#: Measurements within this factor of each other agree (the network's own scale tolerance).
SIZE_AGREEMENT = 1.25
#: The search stops once a candidate this far below the agreed size has been tried: the plateau
#: has been seen from below (smaller candidates only fragment the objects further).
SIZE_BELOW = 2.0
#: :func:`auto_size`'s probes: windows of at most this side (px, zoomed) ...
SIZE_PROBE = 128
#: ... zoomed first as if the objects were this many times the training size (about the largest
#: candidate of the scale search) ...
SIZE_PROBE_FROM = 16.0
#: ... then zoomed in by 2 at a time until the objects found measure at least the probe's size over
#: this (smaller, they were measured from a few pixels each).
SIZE_PROBE_RANGE = 2.0
#: A segmentation whose objects measure within this factor of the size it was zoomed for is kept.
SIZE_SETTLED = 1.15
#: Segmentations tried at most before :func:`auto_size` falls back on the scale search.
SIZE_PASSES = 2
#: Images of more pixels than this are sized by the scale search alone.
SIZE_WHOLE = 2_000_000


def _brightest_window(x, side: int):
    """The `side` x `side` window of `x` (or all of it) with the highest mean: objects, not background."""
    H, W = x.shape[:2]
    sy, sx = min(side, H), min(side, W)
    step_y, step_x = max(1, sy // 4), max(1, sx // 4)
    sums = np.cumsum(np.cumsum(np.pad(x.mean(-1), ((1, 0), (1, 0))), 0), 1)
    ys, xs = np.arange(0, H - sy + 1, step_y), np.arange(0, W - sx + 1, step_x)
    total = sums[ys[:, None] + sy, xs[None] + sx] - sums[ys[:, None], xs[None] + sx] \
        - sums[ys[:, None] + sy, xs[None]] + sums[ys[:, None], xs[None]]
    iy, ix = np.unravel_index(np.argmax(total), total.shape)
    return x[ys[iy]:ys[iy] + sy, xs[ix]:xs[ix] + sx]


def _measure_at(model, x, D, *, task, train_diameter, postprocess, window):
    """Median object diameter (px of `x`) found when `x` is zoomed as if its objects were `D` px.

    The zoomed window keeps its own size (at most `window` a side): zoomed out, a small image costs
    a fraction of one pass (the network function takes any size without retracing).
    """
    from skimage.transform import rescale

    from .flows import diameters
    from .predict import predict_raw, raw_to_labels

    factor = float(train_diameter) / D
    crop = _brightest_window(x, max(8, int(np.ceil(window / factor))))
    z = rescale(crop, factor, order=1, channel_axis=-1, preserve_range=True, anti_aliasing=False)[:window, :window]
    raw = predict_raw(model, z.astype(np.float32), task=task, tile_size=window)
    labels = raw_to_labels(raw, task, postprocess)
    return diameters(labels) / factor if labels.max() >= 2 else 0.0


def _agreed(found):
    """The size most measurements ``(D, d)`` agree on (see :func:`estimate_diameter`), and how many agree."""
    logd = np.log([d for _, d in found])
    agree = np.abs(logd[:, None] - logd[None, :]) < np.log(SIZE_AGREEMENT)
    consistency = np.abs(logd - np.log([D for D, _ in found]))
    best = min(range(len(found)), key=lambda k: (-agree[k].sum(), consistency[k]))
    return float(np.exp(np.median(logd[agree[best]]))), int(agree[best].sum())


def estimate_diameter(model, x, *, task: str, train_diameter: float, postprocess, candidates=SIZE_CANDIDATES,
                      window: int = SIZE_WINDOW):
    """Median object diameter (px) of a prepared image ``(H, W, C)``, from the network itself.

    A scale search.  For each candidate diameter ``D``, largest first, the image is zoomed by
    ``train_diameter / D`` (objects of size ``D`` would then have the size the network learnt);
    one window of at most `window` x `window` zoomed pixels (the brightest, so it holds objects)
    goes through the network and the post-processing, and the median diameter ``d(D)`` of the
    objects found is measured back in the image's pixels.  Around and above the true size,
    ``d(D)`` stays flat: the network, trained with scale augmentation, finds the same objects
    over a range of zooms.  Zoomed too far in, objects fragment into pieces that follow ``D``; too
    far out, they vanish or merge.  So the estimate is the value most candidates agree on: the
    measurement with the most others within ``SIZE_AGREEMENT`` of it (ties: the most
    self-consistent, ``d`` nearest ``D``), and the median of those that agree.  The search stops
    once two measurements agree and a candidate ``SIZE_BELOW`` times smaller than their value
    has been tried, so the expensive zoomed-in candidates are only tried for small objects.
    Last, one window is measured at the agreed size itself, the zoom that gives the objects the
    training size; if it agrees, that measurement is the estimate (the agreed value leans towards
    the zoomed-out candidates, whose objects measure a few percent larger).  The cost is at most
    one window per candidate and one more, whatever the image size; zoomed-out candidates of a
    small image cost a fraction of that.

    Returns
    -------
    diameter : float
        0.0 when no candidate finds at least two objects.
    """
    kw = dict(task=task, train_diameter=train_diameter, postprocess=postprocess, window=window)
    found = []
    for D in sorted(candidates, reverse=True):
        if (d := _measure_at(model, x, D, **kw)) > 0:
            found.append((D, d))
        if found:
            size, agreeing = _agreed(found)
            if agreeing >= 2 and D * SIZE_BELOW <= size:
                break
    if not found:
        return 0.0
    d = _measure_at(model, x, size, **kw)  # `size`: the agreement of the last candidate tried
    return d if d > 0 and abs(np.log(d / size)) < np.log(SIZE_AGREEMENT) else size


class Sizing(NamedTuple):
    """How an image was sized: the object diameter (px, None for no zoom), the zoom factor it
    implies, and the network outputs and labels at that zoom when sizing already computed them
    (:func:`auto_size`), else None."""
    diameter: float | None
    factor: float
    raw: np.ndarray | None = None
    labels: np.ndarray | None = None

    def network_item(self, x):
        """What :func:`unetflow.tiling.predict_raw_many` takes for the prepared image `x` sized so:
        the outputs already made, or the image and its zoom."""
        from .tiling import Finished

        return (x, self.factor) if self.raw is None else Finished(self.raw)


def auto_size(model, x, *, task: str, train_diameter: float, postprocess, segment) -> Sizing:
    """Size a prepared image ``(H, W, C)`` by segmenting it: usually a few small probes and one pass.

    Probes first: windows of at most ``SIZE_PROBE`` px a side (the brightest, see
    :func:`estimate_diameter`), zoomed as if the objects were ``SIZE_PROBE_FROM`` times the training
    size, then zoomed in by 2 at a time until the objects found measure at least the probe's size
    over ``SIZE_PROBE_RANGE``.  Zoomed out, objects up to the probe's size are seen whole; zoomed in
    too far, large objects are cut into pieces that, measured at their own zoom, look like small
    objects, so the probes come from above.  Then the whole image is segmented at the size measured
    (``segment(factor)``) and its objects measured again: within ``SIZE_SETTLED`` of that size, the
    objects had the training size within the network's tolerance, and that segmentation is kept,
    outputs and labels, so sizing costs the probes alone.  Otherwise it is redone at the new
    measurement, ``SIZE_PASSES`` times at most, and when none settles the scale search
    :func:`estimate_diameter` decides (its windows are more robust to debris and clusters than one
    segmentation's median).  Images over ``SIZE_WHOLE`` pixels go to the scale search at once: a
    pass over them that might be discarded costs more than the search.

    Parameters
    ----------
    segment : callable
        ``segment(factor)``: the network outputs of the whole image zoomed by ``factor``, resized
        back to the image (as :func:`unetflow.tiling.predict_rescaled` gives them).

    Returns
    -------
    Sizing
        With the outputs and labels when a segmentation was kept; no zoom when nothing was found.
    """
    from .flows import diameters
    from .predict import raw_to_labels

    kw = dict(task=task, train_diameter=train_diameter, postprocess=postprocess)
    if x.shape[0] * x.shape[1] <= SIZE_WHOLE:
        D = SIZE_PROBE_FROM * train_diameter
        while (d := _measure_at(model, x, D, window=SIZE_PROBE, **kw)) < D / SIZE_PROBE_RANGE \
                and D / 2 >= SIZE_CANDIDATES[-1]:
            D /= 2
        for _ in range(SIZE_PASSES):
            if not SIZE_CANDIDATES[-1] <= d <= SIZE_CANDIDATES[0]:  # nothing found, or outside the search's range
                break
            factor = zoom_factor(train_diameter, d)
            raw = segment(factor)
            labels = raw_to_labels(raw, task, postprocess)
            found = diameters(labels) if labels.max() >= 2 else 0.0
            if found > 0 and abs(np.log(found / d)) < np.log(SIZE_SETTLED):
                return Sizing(d, factor, raw, labels)
            d = found
    d = estimate_diameter(model, x, **kw) or None
    return Sizing(d, zoom_factor(train_diameter, d))


def resolve_size(model, x, diameter, *, task: str, train_diameter, postprocess, segment=None) -> Sizing:
    """How to size a prepared image: :class:`Sizing` for `diameter`.

    `diameter` is ``"native"`` (no zoom), a number, or ``"auto"``: with `segment` (see
    :func:`auto_size`) the image is sized by segmenting it and the outputs come with the size;
    without, by the scale search :func:`estimate_diameter` (no zoom when it finds nothing).
    """
    if diameter == "auto" and segment is not None:
        return auto_size(model, x, task=task, train_diameter=train_diameter, postprocess=postprocess,
                         segment=segment)
    if diameter == "auto":
        diameter = estimate_diameter(model, x, task=task, train_diameter=train_diameter, postprocess=postprocess)
    diameter = None if diameter == "native" else (diameter or None)
    return Sizing(diameter, zoom_factor(train_diameter, diameter))
