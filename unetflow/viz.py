"""Pictures for notebooks and reports: outlines, error maps, flow following step by step."""
from __future__ import annotations

import numpy as np

from .metrics import overlap_table, match_pairs

__all__ = ["to_grey", "outline_overlay", "detail_window", "error_map", "per_object_iou", "flow_trajectories"]


def to_grey(image) -> np.ndarray:
    """A display image in [0, 1]: channel mean, 1st-99.8th percentile stretch."""
    img = np.asarray(image, np.float32)
    img = img.mean(-1) if img.ndim == 3 else img
    lo, hi = np.percentile(img, [1, 99.8])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def outline_overlay(image, truth=None, pred=None) -> np.ndarray:
    """RGB picture: the image in grey, true outlines green, predicted outlines magenta."""
    from skimage.segmentation import find_boundaries

    rgb = np.dstack([to_grey(image)] * 3)
    if truth is not None:
        rgb[find_boundaries(truth, mode="inner")] = (0, 1, 0)
    if pred is not None:
        rgb[find_boundaries(pred, mode="inner")] = (1, 0, 1)
    return rgb


def detail_window(truth, preds=(), size: int = 256) -> tuple:
    """The ``size`` x ``size`` window (a pair of slices) with the most outline pixels of `truth`
    and the `preds`: where a native-resolution crop of a large image shows the most objects."""
    from scipy.ndimage import uniform_filter
    from skimage.segmentation import find_boundaries

    truth = np.asarray(truth)
    edges = find_boundaries(truth, mode="inner").astype(np.float32)
    for p in preds:
        edges += find_boundaries(np.asarray(p), mode="inner")
    h, w = truth.shape
    sy, sx = min(size, h), min(size, w)
    density = uniform_filter(edges, (sy, sx), mode="constant")
    # a window's centre must keep the whole window inside the image
    inner = density[sy // 2:h - (sy - 1) // 2, sx // 2:w - (sx - 1) // 2]
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(inner)), inner.shape))
    return slice(y, y + sy), slice(x, x + sx)


def per_object_iou(truth, pred, thresh: float = 0.5) -> np.ndarray:
    """For each true object (ids 1..N after compacting), the IoU of its match at `thresh` (0 if unmatched)."""
    ov = overlap_table(truth, pred)
    ti, _, iou = match_pairs(ov, thresh)
    out = np.zeros(ov.n_true)
    out[ti - 1] = iou
    return out


def error_map(truth, pred, thresh: float = 0.5) -> np.ndarray:
    """RGB map: matched objects green, missed true objects (FN) red, extra predictions (FP) blue."""
    from .io import relabel_sequential

    t, p = relabel_sequential(np.asarray(truth)), relabel_sequential(np.asarray(pred))
    ov = overlap_table(t, p)
    ti, pi, _ = match_pairs(ov, thresh)
    rgb = np.zeros(t.shape + (3,), np.float32)
    rgb[np.isin(t, np.setdiff1d(np.arange(1, ov.n_true + 1), ti))] = (1, 0, 0)
    rgb[np.isin(p, np.setdiff1d(np.arange(1, ov.n_pred + 1), pi)) & (rgb.sum(-1) == 0)] = (0, 0.4, 1)
    rgb[np.isin(t, ti)] = (0, 0.8, 0)
    return rgb


def flow_trajectories(dP, mask, steps=(0, 5, 20, 200), interp: bool = False):
    """End points of flow following after each number of `steps` (for a step-by-step picture).

    ``dP`` is on the network scale (``FLOW_SCALE`` times unit flows); like ``compute_masks`` the
    field followed is ``dP * mask / FLOW_SCALE``.  Returns a list of (n_steps, p) pairs.
    """
    from .conventions import FLOW_SCALE
    from .postprocess import follow_flows

    field = np.asarray(dP, np.float32) * mask / FLOW_SCALE
    return [(n, follow_flows(field, niter=n, interp=interp, mask=mask)) for n in steps]
