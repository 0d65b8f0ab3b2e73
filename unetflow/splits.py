"""Honest splits: group images that come from one experiment or field of view, then split by group.

A random split by image leaks: the DSB 2018 set holds tiles cut from one larger image (they share
pixels) and series of near-identical acquisitions (same size, modality and look).  A model that has
seen one tile of a field of view scores better on its neighbour than on a new experiment, so such
images must sit in the same split.  Two links make a group (connected components of both):

1. **Neighbouring tiles.** Tiles cut side by side from one larger image continue each other across
   their shared border as smoothly as an image continues from one column to the next
   (:func:`tile_neighbours`).  (The DSB tiles share no pixels: a search for identical textured
   16 x 16 patches across all 664 images found none.)
2. **Same series.** Within one (modality, image size), images whose intensity and object statistics
   are close are one acquisition series: average-linkage clustering of standardised features
   (:func:`series_clusters`), with a distance threshold.

:func:`assign_splits` then deals whole groups to train / val / test, about 80/10/10 per modality, so
every modality reaches val and test whenever it has at least three groups.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pandas as pd

from .manifest import SPLITS

__all__ = ["tile_neighbours", "series_clusters", "group_images", "assign_splits", "image_features",
           "grouped_manifest"]

logger = logging.getLogger(__name__)

#: Two tiles are neighbours when the step across their shared border is at most this many times the
#: step between the last two columns (rows) inside the first tile ...
MAX_STEP_RATIO = 1.5
#: ... and the best partner's step is at most this fraction of the second best's (no ambiguity).
MAX_RIVAL_RATIO = 1 / 1.5
#: Borders flatter than this (grey-level standard deviation) say nothing (black fluorescence background).
MIN_BORDER_STD = 2.0


def _grey(image) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return image.mean(-1) if image.ndim == 3 else image


def tile_neighbours(images, strata=None):
    """Pairs of images that continue each other across a border: tiles cut side by side from one image.

    A tile's last column continues into its right neighbour's first column about as smoothly as
    its own columns continue into each other.  For every image (compared within one stratum and
    one shape) the partner whose first column (row) is nearest to its last one is kept when that
    step is at most ``MAX_STEP_RATIO`` times the image's own step between its last two columns
    (rows), and clearly smaller than the second-best partner's (``MAX_RIVAL_RATIO``).  Flat
    borders (``MIN_BORDER_STD``) are skipped.

    Parameters
    ----------
    images : sequence of (H, W) or (H, W, C) arrays
    strata : sequence of hashable, optional
        Only images of one stratum (and of one shape) are compared.

    Returns
    -------
    list of (i, j, side, step_ratio)
        Image ``j`` continues image ``i`` to the right (``side="x"``) or below (``side="y"``).

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :128]
    >>> big = 100 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 10 * np.sin(yy / 3.0 + xx / 11.0)
    >>> [(i, j, side) for i, j, side, _ in tile_neighbours([big[:, 64:], big[:, :64], big[:, :64].T])]
    [(1, 0, 'x')]
    """
    grey = [_grey(im) for im in images]
    strata = list(strata) if strata is not None else [None] * len(grey)
    by_stratum = defaultdict(list)
    for k, (g, s) in enumerate(zip(grey, strata)):
        by_stratum[(s, g.shape)].append(k)
    pairs = []
    for members in by_stratum.values():
        if len(members) < 2:
            continue
        for side in ("x", "y"):
            views = [grey[k] if side == "x" else grey[k].T for k in members]
            last = np.stack([v[:, -1] for v in views])
            inner = np.stack([v[:, -2] for v in views])
            first = np.stack([v[:, 0] for v in views])
            own = np.abs(last - inner).mean(1)
            step = np.abs(last[:, None, :] - first[None, :, :]).mean(2) / np.maximum(own, 1e-6)[:, None]
            np.fill_diagonal(step, np.inf)
            order = np.argsort(step, axis=1)
            for a in range(len(members)):
                best = step[a, order[a, 0]]
                rival = step[a, order[a, 1]] if len(members) > 2 else np.inf
                if last[a].std() >= MIN_BORDER_STD and best <= MAX_STEP_RATIO and best <= MAX_RIVAL_RATIO * rival:
                    pairs.append((members[a], int(members[order[a, 0]]), side, round(float(best), 2)))
    return sorted(pairs)


def image_features(image: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Statistics that tell acquisition series apart: intensity percentiles and contrast per channel
    (on the 0-1 scale of the image's dtype), and, with labels, log object size and density."""
    from .flows import diameters

    image = np.asarray(image)
    scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    x = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1) / scale
    feats = []
    for c in range(x.shape[1]):
        p1, p50, p99 = np.percentile(x[:, c], [1, 50, 99])
        feats += [p1, p50, p99, x[:, c].std()]
    if labels is not None:
        n = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        feats += [np.log(max(diameters(labels), 1.0)), np.log1p(1e4 * n / labels.size), (labels > 0).mean()]
    return np.asarray(feats, np.float64)


def series_clusters(features: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Cluster ids from average-linkage clustering of standardised feature rows (one series each).

    Features are standardised over the rows given (one modality and size), and clusters are cut at
    `threshold` (in standard deviations, Euclidean, averaged over pairs).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    features = np.asarray(features, np.float64)
    if len(features) < 2:
        return np.zeros(len(features), int)
    sd = features.std(0)
    z = (features - features.mean(0)) / np.where(sd > 1e-12, sd, 1.0)
    return fcluster(linkage(z, "average"), t=threshold * np.sqrt(z.shape[1]), criterion="distance") - 1


def group_images(images, strata, features=None, *, threshold: float = 0.2):
    """Group ids: connected components of neighbouring tiles and of series clusters within each stratum.

    Parameters
    ----------
    images : sequence of arrays
    strata : sequence of hashable
        E.g. ``(modality, height, width)``: tiles and series are only looked for within one stratum.
    features : sequence of 1-D arrays, optional
        Per-image features, of one length within a stratum (default :func:`image_features`).
    threshold : float
        See :func:`series_clusters`; 0 groups by neighbouring tiles only.

    Returns
    -------
    groups : (N,) int array
        Group ids numbered by first appearance.
    neighbours : list
        The neighbouring-tile pairs (:func:`tile_neighbours`).
    """
    n = len(images)
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        parent[find(a)] = find(b)

    neighbours = tile_neighbours(images, strata)
    for i, j, *_ in neighbours:
        union(i, j)
    if threshold > 0:
        if features is None:
            features = [image_features(im) for im in images]
        by_stratum = defaultdict(list)
        for k, s in enumerate(strata):
            by_stratum[s].append(k)
        for members in by_stratum.values():
            ids = series_clusters(np.stack([features[k] for k in members]), threshold)
            first = {}
            for k, c in zip(members, ids):
                union(k, first.setdefault(c, k))
    roots = [find(k) for k in range(n)]
    number = {}
    return np.array([number.setdefault(r, len(number)) for r in roots]), neighbours


def assign_splits(groups, strata, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Deal whole groups to train / val / test, about `fractions` of the images of each stratum.

    Within each stratum (e.g. modality) the groups are shuffled (seeded).  Each group goes to val,
    else test, if it fits in what that split still lacks of its share (with 25 % slack), else to
    train; so a large series always trains.  A split left empty (with a share above 0) then takes the stratum's smallest
    train group, if the stratum has at least three groups.  A group that spans strata goes where
    its first stratum sends it.

    Returns
    -------
    (N,) array of str
    """
    groups, strata = np.asarray(groups), np.asarray([str(s) for s in strata])
    rng = np.random.default_rng(seed)
    split = np.full(len(groups), "", dtype=object)
    for stratum in sorted(set(strata.tolist())):
        gids = [g for g in dict.fromkeys(groups[strata == stratum].tolist()) if not split[groups == g][0]]
        rng.shuffle(gids)
        sizes = {g: int((groups == g).sum()) for g in gids}
        total = sum(sizes.values())
        want = dict(zip(SPLITS, (f * total for f in fractions)))
        have = dict.fromkeys(SPLITS, 0)
        chosen = {}
        for g in gids:
            s = next((s for s in ("val", "test") if have[s] + sizes[g] <= 1.25 * want[s]), "train")
            have[s] += sizes[g]
            chosen[g] = s
        for s in ("val", "test"):
            spare = sorted((sizes[g], g) for g in gids if chosen[g] == "train")
            if have[s] == 0 and want[s] > 0 and len(gids) >= 3 and len(spare) > 1:
                chosen[spare[0][1]] = s
                have[s] += spare[0][0]
        for g, s in chosen.items():
            split[groups == g] = s
    return split.astype(str)


def grouped_manifest(table: pd.DataFrame, images, labels=None, *, threshold: float = 0.2, seed: int = 0,
                     tries: int = 100, fractions=(0.8, 0.1, 0.1)):
    """A copy of a manifest table with ``group``, the old ``split`` as ``split_by_image``, and a new split.

    Tiles and series are looked for within one modality (if the table has that column) and image
    size; splits are dealt per modality (:func:`assign_splits`) with seeds ``seed .. seed + tries - 1``,
    and the deal closest to `fractions` in images and (with `labels`) in objects is kept.

    Returns
    -------
    table : pandas.DataFrame
    neighbours : list
        The neighbouring-tile pairs found (:func:`tile_neighbours`), as row indices.
    """
    table = table.reset_index(drop=True).copy()
    modality = list(table["modality"]) if "modality" in table.columns else ["all"] * len(table)
    strata = [(m,) + np.asarray(im).shape[:2] for m, im in zip(modality, images)]
    labels = labels if labels is not None else [None] * len(images)
    features = [image_features(im, lab) for im, lab in zip(images, labels)]
    groups, neighbours = group_images(images, strata, features, threshold=threshold)
    if "split_by_image" not in table.columns:
        table["split_by_image"] = table["split"]
    table["group"] = [f"g{g:03d}" for g in groups]
    # objects per image weigh in too: dense series would otherwise leave train with few nuclei
    weights = [np.ones(len(images))]
    if labels[0] is not None:
        weights.append(np.array([len(np.unique(lab)) - 1 for lab in labels], float))

    def imbalance(split):
        return sum(abs(w[split == s].sum() / w.sum() - f) for w in weights for s, f in zip(SPLITS, fractions))

    candidates = [assign_splits(groups, modality, fractions, seed=seed + k) for k in range(tries)]
    table["split"] = min(candidates, key=imbalance)
    return table, neighbours
