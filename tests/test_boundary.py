import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from unetflow.boundary import labels_to_boundary_classes


def test_bbbc_thick_boundary():
    labels = np.zeros((12, 16), np.int32)
    labels[2:9, 2:8] = 1
    labels[2:9, 8:14] = 2
    classes = labels_to_boundary_classes(labels)
    thick = find_boundaries(labels, mode="thick")
    assert np.array_equal(classes == 2, thick)
    assert np.array_equal(classes == 1, (labels > 0) & ~thick)
    assert np.array_equal(classes == 0, (labels == 0) & ~thick)
    # the two touching objects are separated by boundary pixels on both sides
    assert np.all(classes[3:8, 7:9] == 2)


def test_width_grows_the_band():
    labels = np.zeros((20, 20), np.int32)
    labels[4:16, 4:16] = 1
    for w in (1, 2, 3):  # a band of w px on each side of the edge (a square's corners rounded by one pixel)
        classes = labels_to_boundary_classes(labels, width=w)
        assert (classes == 1).sum() == (12 - 2 * w) ** 2
        assert (classes == 2).sum() == (12 + 2 * w) ** 2 - 4 - (12 - 2 * w) ** 2
        assert classes[4 - w, 9] == 2 and classes[3 - w, 9] == 0 and classes[3 + w, 9] == 2 and classes[4 + w, 9] == 1
    with pytest.raises(ValueError, match="width"):
        labels_to_boundary_classes(labels, width=0)
