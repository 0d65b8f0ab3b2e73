"""Instance segmentation metrics: IoU matching, AP / F1 / PQ, and the BBBC paper's error categories.

Overlaps are counted sparsely (one pass over the pixels where both images have an object), so
images with thousands of objects cost no dense per-object masks.  Matching is one-to-one and
optimal: it maximises the number of pairs at IoU >= threshold and, among those, their total IoU
(the Hungarian algorithm on each connected group of candidate pairs; above IoU 0.5 every group is
a single pair).

"AP" here is Cellpose's "average precision" and StarDist's "accuracy": TP / (TP + FP + FN).
Empty truth and empty prediction together score 1 (nothing to find, nothing found); any other
zero denominator scores 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .validation import check_labels, relabel_sequential

__all__ = ["overlap_table", "match_pairs", "matching", "average_precision", "matching_dataset", "per_image_table",
           "error_categories", "Matching", "DEFAULT_THRESHOLDS", "SIZE_BINS"]

#: IoU thresholds 0.50:0.05:0.95 (BBBC paper, COCO).
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
#: The BBBC paper's object-size bins (pixels) for missed objects; the last bin is open-ended.
SIZE_BINS = (0, 250, 625, 900, 10000)


@dataclass
class Overlaps:
    """Sparse overlap of two label images: candidate pairs and object areas (ids are 1-based)."""

    true_ids: np.ndarray      # (n_pairs,) id in y_true
    pred_ids: np.ndarray      # (n_pairs,) id in y_pred
    iou: np.ndarray           # (n_pairs,)
    true_areas: np.ndarray    # (n_true + 1,) index = id
    pred_areas: np.ndarray    # (n_pred + 1,)
    n_true: int
    n_pred: int


def overlap_table(y_true, y_pred) -> Overlaps:
    """Sparse intersection-over-union of every overlapping (true, predicted) object pair."""
    y_true = check_labels(y_true, "y_true", ndim=(2, 3))
    y_pred = check_labels(y_pred, "y_pred", ndim=(2, 3))
    if y_true.shape != y_pred.shape:
        raise ValueError(f"`y_pred` (shape {y_pred.shape}) must have the shape of `y_true` (shape {y_true.shape})")
    # ids with gaps must not count as objects: compact them to 1..N first
    t, p = relabel_sequential(y_true.ravel()), relabel_sequential(y_pred.ravel())
    n_true, n_pred = int(t.max(initial=0)), int(p.max(initial=0))
    true_areas = np.bincount(t, minlength=n_true + 1)
    pred_areas = np.bincount(p, minlength=n_pred + 1)
    both = (t > 0) & (p > 0)
    pair = t[both].astype(np.int64) * (n_pred + 1) + p[both]
    keys, inter = np.unique(pair, return_counts=True)
    ti, pi = keys // (n_pred + 1), keys % (n_pred + 1)
    iou = inter / (true_areas[ti] + pred_areas[pi] - inter)
    return Overlaps(ti, pi, iou, true_areas, pred_areas, n_true, n_pred)


def match_pairs(ov: Overlaps, thresh: float):
    """Optimal one-to-one pairs at IoU >= thresh: (true_ids, pred_ids, ious)."""
    ok = ov.iou >= thresh
    ti, pi, iou = ov.true_ids[ok], ov.pred_ids[ok], ov.iou[ok]
    if ti.size == 0:
        return ti, pi, iou
    # group the candidate pairs into connected components of the bipartite graph
    n = ov.n_true + ov.n_pred + 2
    graph = sparse.coo_matrix((np.ones(ti.size), (ti, ov.n_true + 1 + pi)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    group = comp[ti]
    order = np.argsort(group, kind="stable")
    ti, pi, iou, group = ti[order], pi[order], iou[order], group[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    keep = np.zeros(ti.size, bool)
    for a, b in zip(starts, np.r_[starts[1:], ti.size]):
        if b - a == 1:
            keep[a] = True
            continue
        rows, r_inv = np.unique(ti[a:b], return_inverse=True)
        cols, c_inv = np.unique(pi[a:b], return_inverse=True)
        score = np.zeros((rows.size, cols.size))
        # every candidate counts 1 (maximise the number of matches), plus IoU / 2 as tie-break
        score[r_inv, c_inv] = 1 + iou[a:b] / 2
        r, c = linear_sum_assignment(score, maximize=True)
        chosen = score[r, c] > 0
        lookup = {(ri, ci): a + k for k, (ri, ci) in enumerate(zip(r_inv, c_inv))}
        for ri, ci in zip(r[chosen], c[chosen]):
            keep[lookup[(ri, ci)]] = True
    return ti[keep], pi[keep], iou[keep]


@dataclass
class Matching:
    """Matching statistics at one IoU threshold."""

    thresh: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    panoptic_quality: float

    def as_dict(self) -> dict:
        return asdict(self)


def _div(a, b, both_empty):
    if b == 0:
        return 1.0 if both_empty else 0.0
    return float(a / b)


def _scores(thresh, n_true, n_pred, tp, sum_iou) -> Matching:
    fp, fn = n_pred - tp, n_true - tp
    empty = n_true == 0 and n_pred == 0
    return Matching(
        thresh=float(thresh), n_true=int(n_true), n_pred=int(n_pred), tp=int(tp), fp=int(fp), fn=int(fn),
        precision=_div(tp, tp + fp, empty), recall=_div(tp, tp + fn, empty),
        f1=_div(2 * tp, 2 * tp + fp + fn, empty), ap=_div(tp, tp + fp + fn, empty),
        mean_matched_iou=_div(sum_iou, tp, empty),
        panoptic_quality=_div(sum_iou, tp + fp / 2 + fn / 2, empty))


def _check_thresholds(thresh):
    ts = np.atleast_1d(np.asarray(thresh, float))
    if ts.size == 0 or np.any((ts < 0) | (ts > 1)):
        raise ValueError(f"IoU thresholds must be in [0, 1], got {thresh!r}")
    return ts


def matching(y_true, y_pred, thresh=0.5):
    """Match predicted to true objects one-to-one at IoU >= `thresh` and score the result.

    Parameters
    ----------
    y_true, y_pred : (H, W) or (Z, Y, X) arrays of int
        Label images (0 background).  Ids need not be consecutive.
    thresh : float or sequence of float
        IoU threshold(s); a sequence returns one result per threshold.

    Returns
    -------
    Matching or list of Matching
        tp, fp, fn, precision, recall, f1, ap = tp / (tp + fp + fn), mean matched IoU and
        panoptic quality.

    Examples
    --------
    >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
    >>> p = np.zeros((6, 6), int); p[:3, :3] = 5
    >>> m = matching(t, p)
    >>> (m.tp, m.fp, m.fn, m.ap)
    (1, 0, 1, 0.5)
    """
    ov = overlap_table(y_true, y_pred)
    ts = _check_thresholds(thresh)
    out = []
    for t in ts:
        _, _, iou = match_pairs(ov, t)
        out.append(_scores(t, ov.n_true, ov.n_pred, iou.size, iou.sum()))
    return out if np.ndim(thresh) else out[0]


def average_precision(y_true, y_pred, thresholds=DEFAULT_THRESHOLDS) -> np.ndarray:
    """AP = TP / (TP + FP + FN) at each threshold, as an array."""
    return np.array([m.ap for m in matching(y_true, y_pred, list(np.atleast_1d(thresholds)))])


def matching_dataset(y_true_list, y_pred_list, thresholds=DEFAULT_THRESHOLDS):
    """Dataset-level scores: counts summed over images (StarDist's ``matching_dataset``).

    Returns a list of :class:`Matching`, one per threshold.
    """
    y_true_list, y_pred_list = list(y_true_list), list(y_pred_list)
    if len(y_true_list) != len(y_pred_list):
        raise ValueError(f"{len(y_true_list)} true label images but {len(y_pred_list)} predictions")
    ts = _check_thresholds(thresholds)
    tot = np.zeros((ts.size, 4))  # n_true, n_pred, tp, sum_iou
    for yt, yp in zip(y_true_list, y_pred_list):
        ov = overlap_table(yt, yp)
        for k, t in enumerate(ts):
            _, _, iou = match_pairs(ov, t)
            tot[k] += (ov.n_true, ov.n_pred, iou.size, iou.sum())
    return [_scores(t, *tot[k]) for k, t in enumerate(ts)]


def error_categories(y_true, y_pred, *, thresh: float = 0.7, overlap: float = 0.1,
                     size_bins=SIZE_BINS) -> dict:
    """The BBBC paper's error categories (Caicedo et al. 2019).

    Returns
    -------
    dict
        ``missed``: true objects unmatched at IoU `thresh`, ``missed_<lo>-<hi>``: the same by true
        object area (px) in `size_bins` (the last bin open-ended); ``extra``: unmatched predictions
        at `thresh`; ``merges``: predictions overlapping more than one true object at IoU >
        `overlap`; ``splits``: true objects overlapping more than one prediction at IoU > `overlap`.
    """
    ov = overlap_table(y_true, y_pred)
    ti, pi, _ = match_pairs(ov, thresh)
    missed = np.setdiff1d(np.arange(1, ov.n_true + 1), ti)
    areas = ov.true_areas[missed]
    out = {"missed": int(missed.size), "extra": int(ov.n_pred - pi.size)}
    edges = list(size_bins) + [np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"missed_{lo}-{hi}" if np.isfinite(hi) else f"missed_{lo}+"
        out[name] = int(np.count_nonzero((areas >= lo) & (areas < hi)))
    strong = ov.iou > overlap
    out["merges"] = int(np.count_nonzero(np.bincount(ov.pred_ids[strong], minlength=ov.n_pred + 1) > 1))
    out["splits"] = int(np.count_nonzero(np.bincount(ov.true_ids[strong], minlength=ov.n_true + 1) > 1))
    return out


def per_image_table(y_true_list, y_pred_list, names=None, thresholds=DEFAULT_THRESHOLDS):
    """A pandas table with one row per (image, threshold): counts and scores, plus the error
    categories (at IoU 0.7) repeated on each of the image's rows."""
    import pandas as pd

    y_true_list, y_pred_list = list(y_true_list), list(y_pred_list)
    if len(y_true_list) != len(y_pred_list):
        raise ValueError(f"{len(y_true_list)} true label images but {len(y_pred_list)} predictions")
    names = list(names) if names is not None else [str(i) for i in range(len(y_true_list))]
    rows = []
    for name, yt, yp in zip(names, y_true_list, y_pred_list):
        errors = error_categories(yt, yp)
        for m in matching(yt, yp, list(np.atleast_1d(thresholds))):
            rows.append({"image": name, **m.as_dict(), **errors})
    return pd.DataFrame(rows)
