"""The BBBC U-Net's 3-class target: background, interior, boundary."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .conventions import BACKGROUND, BOUNDARY, INTERIOR
from .validation import check_labels

__all__ = ["labels_to_boundary_classes"]


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
