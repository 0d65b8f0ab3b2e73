"""The embedded default data set: synthetic fluorescent nuclei, generated deterministically.

Elliptical nuclei of varied size and brightness, packed so that many touch, with textured
interiors, blur, background and noise.  Used by the quickstart when no data is given, and by the
tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .flows import diameters
from .io import atomic_write, write_image, write_labels

__all__ = ["synthetic_nuclei", "synthetic_cells", "make_synthetic_dataset"]


def synthetic_nuclei(rng: np.random.Generator, shape=(128, 128), n_objects: int | None = None,
                     radius_range=(5.0, 11.0)):
    """One synthetic image and its instance labels.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (int, int)
    n_objects : int, optional
        Nuclei to try to place (default: enough to cover about 30% of the image).
    radius_range : (float, float)
        Range of the ellipses' semi-axes, in pixels.

    Returns
    -------
    image : (H, W) float32 array
    labels : (H, W) int32 array
    """
    H, W = shape
    mean_area = np.pi * np.mean(radius_range) ** 2
    if n_objects is None:
        n_objects = max(1, int(0.3 * H * W / mean_area))
    yy, xx = np.mgrid[:H, :W]
    labels = np.zeros(shape, np.int32)
    image = np.zeros(shape, np.float64)
    k = 0
    for _ in range(n_objects * 3):
        if k >= n_objects:
            break
        a, b = rng.uniform(*radius_range, size=2)
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        c, s = np.cos(theta), np.sin(theta)
        u = ((yy - cy) * c + (xx - cx) * s) / a
        v = (-(yy - cy) * s + (xx - cx) * c) / b
        obj = u ** 2 + v ** 2 <= 1
        overlap = np.count_nonzero(obj & (labels > 0))
        if obj.sum() < 10 or overlap > 0.15 * obj.sum():  # touching and slightly overlapping: allowed
            continue
        k += 1
        new = obj & (labels == 0)
        labels[new] = k
        brightness = rng.uniform(0.4, 1.0)
        texture = 1 + 0.15 * rng.standard_normal(shape)
        image[new] = brightness * (0.75 + 0.25 * (1 - (u ** 2 + v ** 2)[new])) * texture[new]
    image = ndimage.gaussian_filter(image, rng.uniform(0.8, 1.6))
    image += 0.05 + 0.02 * (yy / H)  # uneven background
    image += rng.normal(0, 0.03, shape)
    image = np.clip(image, 0, None)
    return (image * 4000).astype(np.float32), labels


def synthetic_cells(rng: np.random.Generator, shape=(128, 128), grow: int = 6):
    """One synthetic two-channel cell image ``[cytoplasm, nuclei]`` and its whole-cell labels.

    Cells are :func:`synthetic_nuclei`'s nuclei grown by `grow` px into their neighbourhood (so
    they touch more than the nuclei do); the cytoplasm channel is dim and textured over each cell,
    brighter near its border, and the nuclei channel is the nuclei image.  A model has to read
    both channels: the cytoplasm gives the outlines, the nuclei tell touching cells apart.

    Returns
    -------
    image : (H, W, 2) float32 array
    labels : (H, W) int32 array
    """
    from skimage.segmentation import expand_labels, find_boundaries

    nuclei_image, nuclei = synthetic_nuclei(rng, shape, radius_range=(3.0, 6.0))
    cells = expand_labels(nuclei, grow).astype(np.int32)
    brightness = rng.uniform(0.3, 1.0, cells.max() + 1)
    cyto = brightness[cells] * (cells > 0) * (1 + 0.2 * rng.standard_normal(shape))
    cyto += 0.3 * ndimage.gaussian_filter(find_boundaries(cells, mode="inner").astype(float), 1.0)
    cyto = np.clip(ndimage.gaussian_filter(cyto, 1.0) + rng.normal(0, 0.03, shape) + 0.05, 0, None) * 3000
    return np.stack([cyto.astype(np.float32), nuclei_image], -1), cells


def make_synthetic_dataset(out_dir, n_images: int = 24, shape=(128, 128), seed: int = 0,
                           splits=(0.7, 0.15, 0.15), kind: str = "nuclei") -> Path:
    """Write a synthetic data set (uint16 TIFF images and labels) and its ``manifest.csv``.

    `kind` is ``"nuclei"`` (one channel, :func:`synthetic_nuclei`) or ``"cells"`` (two channels
    ``[cytoplasm, nuclei]``, :func:`synthetic_cells`).  The same arguments always give the same
    files.  Returns the manifest's path.
    """
    makers = {"nuclei": synthetic_nuclei, "cells": synthetic_cells}
    if kind not in makers:
        raise ValueError(f"`kind` must be one of {sorted(makers)}, got {kind!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    n_train = max(1, round(splits[0] * n_images))
    n_val = max(1, round(splits[1] * n_images))
    rows = ["image,label,split,channels,modality,median_object_diameter_px"]
    for i in range(n_images):
        rng = np.random.default_rng([seed, i])
        image, labels = makers[kind](rng, shape)
        write_image(out / "images" / f"synth_{i:03d}.tif", image.astype(np.uint16))
        write_labels(out / "labels" / f"synth_{i:03d}.tif", labels)
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        rows.append(f"images/synth_{i:03d}.tif,labels/synth_{i:03d}.tif,{split},{1 if image.ndim == 2 else image.shape[-1]},"
                    f"synthetic,{diameters(labels):.1f}")
    path = out / "manifest.csv"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(rows) + "\n"))
    return path
