"""Argument checks shared by the public array functions.

Every message names the argument (or file) and says what is wrong with it, so a user never
gets a silent wrong result from an array of the wrong shape or type.
"""
from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

__all__ = ["check_labels", "check_flows", "check_image", "relabel_sequential", "OptionsMixin"]


def check_labels(labels, name: str = "labels", ndim=(2,)) -> np.ndarray:
    """Validate instance labels and return them as a C-contiguous int32 array.

    Parameters
    ----------
    labels : array_like
        Integer label image; 0 background, positive ids objects.
    name : str
        The argument's name, used in error messages.
    ndim : tuple of int
        Accepted numbers of dimensions.

    Raises
    ------
    ValueError
        If the array is boolean, not integer-valued, negative, too large for int32, of the wrong
        number of dimensions, or 3-D with a singleton axis (ambiguous: ``(1, H, W)`` is almost
        always a 2-D image with a stray axis).
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        raise ValueError(
            f"`{name}` is a boolean mask, not instance labels: convert it with "
            "`unetflow.io.binary_to_labels` (touching objects cannot be separated in a binary mask)")
    if arr.ndim not in ndim:
        raise ValueError(f"`{name}` (shape {arr.shape}) must have {' or '.join(map(str, ndim))} dimensions")
    if arr.ndim == 3 and 1 in arr.shape:
        raise ValueError(
            f"`{name}` (shape {arr.shape}) has a singleton axis: is it a 2-D label image with an extra "
            "axis? Squeeze it (e.g. `labels[0]`) or pass a real 3-D volume")
    if arr.size == 0:
        raise ValueError(f"`{name}` (shape {arr.shape}) is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"`{name}` must be an integer label image, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"`{name}` (dtype {arr.dtype}) has non-integer values: it is not a label image")
    lo, hi = (arr.min(), arr.max())
    if lo < 0:
        raise ValueError(f"`{name}` has negative ids (minimum {lo}); labels must be 0 (background) or positive")
    if hi > np.iinfo(np.int32).max:
        raise ValueError(f"`{name}` has ids up to {hi}, more than int32 holds; relabel it to 1..N first")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_flows(flows, name: str = "flows", shape=None) -> np.ndarray:
    """Validate a ``(2, H, W)`` or ``(3, Z, Y, X)`` flow field; return it as float32.

    NaN and inf are an error: a non-finite flow cannot be followed, and zeroing it would hide a
    broken network or file.
    """
    arr = np.asarray(flows)
    if arr.ndim not in (3, 4) or arr.shape[0] != arr.ndim - 1:
        raise ValueError(
            f"`{name}` (shape {arr.shape}) must have shape (2, H, W) = (dy, dx) or (3, Z, Y, X); "
            "a channels-last (H, W, 2) array must be moved with "
            "`unetflow.conventions.flows_to_channels_first`")
    if shape is not None and arr.shape[1:] != tuple(shape):
        raise ValueError(f"`{name}` (shape {arr.shape}) must have spatial shape {tuple(shape)}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` has {np.count_nonzero(~np.isfinite(arr))} NaN or inf values")
    return arr


def check_image(image, name: str = "image") -> np.ndarray:
    """Validate an image and return it as float32 ``(H, W, C)``.

    A 2-D array gets a channel axis.  NaN or inf is an error.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"`{name}` (shape {arr.shape}) must be (H, W) or channels-last (H, W, C)")
    if arr.size == 0:
        raise ValueError(f"`{name}` (shape {arr.shape}) is empty")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"`{name}` has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` has {np.count_nonzero(~np.isfinite(arr))} NaN or inf values")
    return arr


def check_outputs(outputs, name: str, channels) -> np.ndarray:
    """Validate a model's blended outputs ``(H, W, len(channels))`` and return them as float32.

    `channels` names what each channel holds (for the error message).  NaN or inf is an error:
    non-finite outputs mean a broken network or file, not empty images.
    """
    arr = np.asarray(outputs, np.float32)
    if arr.ndim != 3 or arr.shape[-1] != len(channels):
        raise ValueError(f"`{name}` (shape {arr.shape}) must be (H, W, {len(channels)}): {', '.join(channels)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` has {np.count_nonzero(~np.isfinite(arr))} NaN or inf values")
    return arr


def relabel_sequential(labels) -> np.ndarray:
    """Renumber ids to 1..N in order of their value (0 stays background); returns int32.

    Without background (no 0 in `labels`), ids start at 1 all the same.

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 7, 7], [3, 0, 9]]))
    array([[0, 2, 2],
           [1, 0, 3]], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.size and labels.min() >= 0 and labels.max() <= 4 * labels.size + 1024:
        # a lookup table is much faster than sorting, when ids are not huge
        present = np.bincount(labels.ravel()) > 0
        present[0] = False
        lut = np.cumsum(present).astype(np.int32)
        lut[~present] = 0
        return lut[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    if values.size and values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)


class OptionsMixin:
    """Mixin of the option dataclasses (post-processing): copies with checked overrides."""

    def with_overrides(self, **overrides):
        """A copy with some fields replaced; an unknown name is a ValueError listing the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown post-processing option(s) {unknown}; known: {sorted(known)}")
        return replace(self, **overrides)
