"""The BBBC U-Net's representation: its 3-class target (background, interior, boundary) and the
recovery of instances from predicted class probabilities (Caicedo et al., Cytometry A 95, 952-965,
2019; github.com/carpenterlab/unet4nuclei)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .conventions import BACKGROUND, BOUNDARY, INTERIOR
from .validation import OptionsMixin, check_labels, check_outputs

__all__ = ["labels_to_boundary_classes", "boundary_to_labels", "BoundaryPostprocessConfig"]


def labels_to_boundary_classes(labels, width: int = 1) -> np.ndarray:
    """Instance labels to the BBBC U-Net's classes: 0 background, 1 interior, 2 boundary.

    The boundary is ``skimage.segmentation.find_boundaries(labels, mode="thick")`` as in
    unet4nuclei: the pixels on both sides of every edge between different ids (object/object and
    object/background), about 2 px wide.  Boundary pixels override interior and background.

    Parameters
    ----------
    labels : (H, W) array of int
        Instance labels.
    width : int
        Thickness of the band on each side of an edge; 1 is BBBC's thick boundary, each further
        unit grows it by one 3x3 dilation.

    Returns
    -------
    classes : (H, W) uint8 array

    Examples
    --------
    >>> labels = np.zeros((6, 6), np.int32)
    >>> labels[1:5, 1:5] = 1
    >>> labels_to_boundary_classes(labels)  # the corners touch the object only diagonally
    array([[0, 2, 2, 2, 2, 0],
           [2, 2, 2, 2, 2, 2],
           [2, 2, 1, 1, 2, 2],
           [2, 2, 1, 1, 2, 2],
           [2, 2, 2, 2, 2, 2],
           [0, 2, 2, 2, 2, 0]], dtype=uint8)
    """
    from skimage.segmentation import find_boundaries

    labels = check_labels(labels, "labels", ndim=(2,))
    if int(width) != width or width < 1:
        raise ValueError(f"`width` must be a positive integer, got {width!r}")
    boundary = find_boundaries(labels, mode="thick")
    if width > 1:
        boundary = ndimage.binary_dilation(boundary, np.ones((3, 3), bool), iterations=int(width) - 1)
    classes = np.full(labels.shape, BACKGROUND, np.uint8)
    classes[labels > 0] = INTERIOR
    classes[boundary] = BOUNDARY
    return classes


def _remove_small(mask, min_size):
    """``mask`` without its 4-connected components of fewer than `min_size` pixels."""
    comp, _ = ndimage.label(mask)
    small = np.bincount(comp.ravel()) < min_size
    small[0] = False
    return mask & ~small[comp]


@dataclass(frozen=True)
class BoundaryPostprocessConfig(OptionsMixin):
    """Options of :func:`boundary_to_labels` (defaults: the BBBC recipe, Caicedo et al.,
    Cytometry A 95:952-965, 2019).

    Attributes
    ----------
    method : {"dilate", "watershed"}
        "dilate": connected components of the interior, each dilated by ``dilation`` 3x3 steps to
        give back the boundary ring (BBBC).  "watershed": the interiors grow into every pixel
        predicted as interior or boundary, by watershed on the boundary probability.
    min_size : int
        Interior holes and objects under this many pixels are removed (BBBC: 16).
    boundary_boost : float
        The boundary probability is multiplied by this before the argmax (BBBC's
        ``boundary_boost_factor``; 1 is a plain argmax).
    dilation : int
        3x3 dilation steps for "dilate".
    """

    method: str = "dilate"
    min_size: int = 16
    boundary_boost: float = 1.0
    dilation: int = 1



def boundary_to_labels(probs, config: BoundaryPostprocessConfig | None = None, **options) -> np.ndarray:
    """Instance labels from the boundary model's class probabilities.

    Parameters
    ----------
    probs : (H, W, 3) array
        Softmax probabilities of background, interior, boundary (channels-last).
    config : BoundaryPostprocessConfig, optional
        Options; keyword arguments override its fields.

    Returns
    -------
    labels : (H, W) int32 array

    Examples
    --------
    >>> probs = np.zeros((8, 8, 3)); probs[..., 0] = 1
    >>> probs[2:6, 2:6] = [0, 0, 1]; probs[3:5, 3:5] = [0, 1, 0]
    >>> boundary_to_labels(probs, min_size=1)[1:7, 1:7]
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 1, 1, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    from skimage.segmentation import expand_labels, watershed

    config = (config or BoundaryPostprocessConfig()).with_overrides(**options)
    if config.method not in ("dilate", "watershed"):
        raise ValueError(f"`method` must be 'dilate' or 'watershed', got {config.method!r}")
    probs = check_outputs(probs, "probs", ("background", "interior", "boundary"))
    weighted = probs * np.array([1.0, 1.0, config.boundary_boost], np.float32)
    classes = np.argmax(weighted, axis=-1)
    interior = classes == INTERIOR
    if config.min_size > 0:
        interior = ~_remove_small(~interior, config.min_size)  # holes are small background parts
        interior = _remove_small(interior, config.min_size)
    labels, _ = ndimage.label(interior)
    if config.method == "dilate":
        if config.dilation > 0:
            # expand_labels grows each object without letting it overwrite a neighbour
            labels = expand_labels(labels, distance=config.dilation * np.sqrt(2) + 1e-6)
            # a 3x3 (chessboard) dilation reaches diagonal pixels at distance sqrt(2)
    else:
        foreground = classes != BACKGROUND
        labels = watershed(probs[..., BOUNDARY], markers=labels, mask=foreground | (labels > 0))
    return labels.astype(np.int32)
