"""The distance representation: each object's pixels carry their distance to the object's border,
divided by the object's largest such distance (1 at the centre, falling to 0 at the border), plus
a cell-probability logit.  Instances are recovered by a marker-controlled watershed: the markers
are the distance map's h-maxima (regional maxima at least ``h`` above their surroundings, so one
per object even where the predicted peak is flat or noisy), grown over the cell mask downhill in
distance.  This is the distance-map route to separating touching nuclei (Naylor et
al., IEEE TMI 38, 448-459, 2019), here normalised per object so the target does not change when
an image is zoomed: the same augmentations as the other representations apply unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .validation import OptionsMixin, check_labels, check_outputs

__all__ = ["DistancePostprocessConfig", "labels_to_distance", "distance_to_labels", "DISTANCE_SCALE"]

#: The network's distance channel is trained against this multiple of the [0, 1] target (as
#: Cellpose scales unit flows by 5, so both regression targets have one magnitude).
DISTANCE_SCALE = 5.0


def labels_to_distance(labels) -> np.ndarray:
    """Per-object normalised distance to the border: ``(H, W)`` float32 in [0, 1], 0 outside objects.

    Each object's Euclidean distance transform (touching objects are separate: a pixel's distance
    is to the nearest pixel outside its own object, the image edge counting as outside), divided
    by the object's maximum.

    Examples
    --------
    >>> labels = np.zeros((7, 9), np.int32)
    >>> labels[1:6, 1:4] = 1; labels[1:6, 4:8] = 2
    >>> labels_to_distance(labels)[3].round(2)
    array([0. , 0.5, 1. , 0.5, 0.5, 1. , 1. , 0.5, 0. ], dtype=float32)
    """
    labels = check_labels(labels, "labels", ndim=(2,))
    out = np.zeros(labels.shape, np.float32)
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None:
            continue
        mask = labels[box] == i
        d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        out[box][mask] = (d[mask] / d.max()).astype(np.float32)
    return out


@dataclass(frozen=True)
class DistancePostprocessConfig(OptionsMixin):
    """Options of :func:`distance_to_labels`.

    Attributes
    ----------
    cellprob_threshold : float
        Threshold on the cellprob *logit* (0.0 is probability 0.5): the cell mask.
    markers : {"maxima", "threshold"}
        "maxima": the h-maxima of the predicted distance (``skimage.morphology.h_maxima``), each
        connected one a marker.  "threshold": the connected regions of cell pixels whose distance
        exceeds ``seed_threshold``.
    h : float
        Least height (normalised distance, 0-1) of a maximum above the saddle to its neighbour.
    seed_threshold : float
        Normalised distance (0-1) of the "threshold" markers.
    min_size : int
        Objects smaller than this (pixels) are removed, holes smaller than this filled.
    """

    cellprob_threshold: float = 0.0
    markers: str = "maxima"
    h: float = 0.2
    seed_threshold: float = 0.5
    min_size: int = 15


def distance_to_labels(raw, config: DistancePostprocessConfig | None = None, **options) -> np.ndarray:
    """Instance labels from the distance model's outputs ``(H, W, 2)``: ``[distance, cellprob_logit]``.

    The distance channel is on the network's scale (``DISTANCE_SCALE`` times the target).

    Examples
    --------
    What a perfect network predicts gives the objects back; where two objects touch, both sides
    of the line have the same distance, so a pixel there may go to either:

    >>> from unetflow.metrics import matching
    >>> labels = np.zeros((20, 24), np.int32)
    >>> labels[2:12, 2:12] = 1; labels[4:16, 12:22] = 2
    >>> raw = np.stack([DISTANCE_SCALE * labels_to_distance(labels), np.where(labels > 0, 10.0, -10.0)], -1)
    >>> masks = distance_to_labels(raw)
    >>> int(masks.max()), matching(labels, masks, thresh=0.9).tp
    (2, 2)
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from .dynamics import fill_holes_and_remove_small_masks

    config = (config or DistancePostprocessConfig()).with_overrides(**options)
    if config.markers not in ("maxima", "threshold"):
        raise ValueError(f"`markers` must be 'maxima' or 'threshold', got {config.markers!r}")
    raw = check_outputs(raw, "raw", ("distance", "cellprob logit"))
    distance, mask = raw[..., 0] / DISTANCE_SCALE, raw[..., 1] > config.cellprob_threshold
    if config.markers == "maxima":
        # background at -1: every object's maxima stand at least h above the cell mask's edge
        peaks = h_maxima(np.where(mask, distance, -1.0).astype(np.float64), config.h) > 0
    else:
        peaks = distance > config.seed_threshold
    seeds, _ = ndimage.label(mask & peaks, np.ones((3, 3), bool))
    labels = watershed(-distance, seeds, mask=mask)
    return fill_holes_and_remove_small_masks(labels.astype(np.int32), min_size=config.min_size)
