"""Object size: how much an image is zoomed so its objects have the size the network learnt.

A run trained at one object size (``augment.target_diameter``) records it in its meta.json
(:attr:`unetflow.predict.Run.train_diameter`).  An image whose median object diameter is ``d`` px is
zoomed by ``train_diameter / d`` before the network, and the outputs are zoomed back.  Every entry
point (``predict_instances``, ``unetflow predict``, ``unetflow evaluate``, block-wise prediction)
says how ``d`` is found in one vocabulary, checked by :func:`check_diameter`:

``"auto"``
    estimated from the image by the network itself (:func:`estimate_diameter`);
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

import numpy as np

__all__ = ["check_diameter", "default_sizing", "choose_sizing", "require_train_diameter", "zoom_factor", "estimate_diameter",
           "resolve_size", "SIZINGS", "SIZE_CANDIDATES", "SIZE_WINDOW", "SIZE_AGREEMENT",
           "SIZE_BELOW"]

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


def resolve_size(model, x, diameter, *, task: str, train_diameter, postprocess):
    """The object diameter to size a prepared image by, and the zoom factor it implies.

    `diameter` is ``"native"`` (no zoom), a number, or ``"auto"`` (:func:`estimate_diameter`; no zoom
    when it finds nothing).  Returns ``(diameter in px or None, zoom factor)``.
    """
    if diameter == "auto":
        diameter = estimate_diameter(model, x, task=task, train_diameter=train_diameter, postprocess=postprocess)
    diameter = None if diameter == "native" else (diameter or None)
    return diameter, zoom_factor(train_diameter, diameter)
