"""Cellpose flow targets: instance labels -> unit vectors along a heat-diffusion gradient.

The algorithm is Cellpose's 2020 one (Stringer et al., Nature Methods 18, 100-106, 2021; ``masks_to_flows`` in
``cellpose/dynamics.py`` of github.com/MouseLand/cellpose, 2020):
for every object, heat is injected at the object pixel nearest the median of its pixels and
diffused over the object's pixels with a 3x3 mean for ``2 * (ptp(x) + ptp(y))`` iterations;
the flow is the normalised central-difference gradient of ``log(1 + T)``.  Cellpose 2020's code
indexes its flat diffusion buffer with a row stride one pixel narrower than the buffer
(``lx`` instead of ``lx + 2``); that quirk shapes its printed numbers, so the kernel below keeps
it exactly (the tests compare against a transcription of that code, tests/seed_reference.py).

Only NumPy, SciPy and Numba are imported here: no TensorFlow.
"""
from __future__ import annotations

import numba
import numpy as np

from .validation import check_labels

__all__ = ["masks_to_flows", "flows_to_rgb", "diameters", "bounding_boxes", "next_row", "FLOWS_ALGORITHM_VERSION"]

#: Bumped whenever the numbers :func:`masks_to_flows` produces change; part of the cache key.
FLOWS_ALGORITHM_VERSION = "seed2020-1"


@numba.njit(cache=True, nogil=True)
def _object_flow(masks, label, r0, r1, c0, c1, mu, normalize):
    """Diffuse heat in one object (bounding box ``[r0:r1, c0:c1]``) and write its gradient into
    `mu` (whose dtype it is cast to): raw, or made a unit vector with `normalize`.

    A line-by-line equivalent of Cellpose 2020's per-object loop body, including its flat-index
    arithmetic with row stride ``lx`` (see the module docstring).
    """
    ly = r1 - r0 + 1
    lx = c1 - c0 + 1
    n = 0
    for r in range(r0, r1):
        for c in range(c0, c1):
            if masks[r, c] == label:
                n += 1
    if n == 0:
        return
    y = np.empty(n, np.int64)
    x = np.empty(n, np.int64)
    k = 0
    for r in range(r0, r1):
        for c in range(c0, c1):
            if masks[r, c] == label:
                y[k] = r - r0 + 1
                x[k] = c - c0 + 1
                k += 1
    ymed_f = np.median(y.astype(np.float64))
    xmed_f = np.median(x.astype(np.float64))
    imin = 0
    dmin = np.inf
    for j in range(n):
        d = (x[j] - xmed_f) ** 2 + (y[j] - ymed_f) ** 2
        if d < dmin:  # strict: the first minimum wins, as np.argmin
            dmin = d
            imin = j
    ymed = y[imin]
    xmed = x[imin]
    niter = 2 * ((x.max() - x.min()) + (y.max() - y.min()))

    # Dense Jacobi sweeps over the box instead of the reference's gather over the object's pixel
    # list: contiguous loads let LLVM vectorise the stencil.  `inside` (1 on the object, 0 elsewhere)
    # zeroes what the reference never writes; the sum keeps the reference's order, so the result is
    # bit for bit the same.  Heat spreads one pixel a sweep from the centre, and outside that
    # square everything is still exactly 0, so each sweep covers only the square.  (Column 0 of
    # the stride-lx buffer is never an object pixel: it is the zero border on both sides.)
    size = (ly + 2) * (lx + 2)
    T = np.zeros(size, np.float64)
    Tn = np.zeros(size, np.float64)
    inside = np.zeros(size, np.float64)
    for j in range(n):
        inside[y[j] * lx + x[j]] = 1.0
    centre = ymed * lx + xmed
    ninth = 1.0 / 9.0
    for t in range(niter):
        T[centre] += 1.0
        ya = max(1, ymed - t - 1)
        yb = min(ly - 1, ymed + t + 1)
        xa = max(1, xmed - t - 1)
        xb = min(lx - 1, xmed + t + 1)
        w = xb - xa + 1
        for r in range(ya, yb + 1):
            # row slices indexed from 0: no negative indices, which keeps the loop vectorisable
            o = r * lx + xa
            up = T[o - lx - 1:o - lx + w + 1]
            mid = T[o - 1:o + w + 1]
            down = T[o + lx - 1:o + lx + w + 1]
            ins = inside[o:o + w]
            out = Tn[o:o + w]
            for k in range(w):
                out[k] = ins[k] * (ninth * (mid[k + 1] + up[k + 1] + down[k + 1] + mid[k] + mid[k + 2]
                                            + up[k] + up[k + 2] + down[k] + down[k + 2]))
        T, Tn = Tn, T
    for j in range(n):
        i = (y[j] + 1) * lx + x[j] + 1
        T[i] = np.log(1.0 + T[i])
    for j in range(n):
        gy = T[(y[j] + 1) * lx + x[j]] - T[(y[j] - 1) * lx + x[j]]
        gx = T[y[j] * lx + x[j] + 1] - T[y[j] * lx + x[j] - 1]
        if normalize:  # the seed's mu / (1e-20 + |mu|), in its order of operations
            norm = 1e-20 + np.sqrt(gy * gy + gx * gx)
            gy /= norm
            gx /= norm
        mu[0, r0 + y[j] - 1, c0 + x[j] - 1] = gy
        mu[1, r0 + y[j] - 1, c0 + x[j] - 1] = gx


@numba.njit(cache=True, parallel=True)
def _flows_2d(masks, lo, hi, order, nthreads, mu, normalize):
    """Gradients of all objects (boxes ``lo:hi``) into `mu`; objects are spread over threads round-robin.

    ``order`` lists object indices from the most to the least expensive, so dealing them out
    round-robin balances the threads even when a few objects dominate the cost.
    """
    for t in numba.prange(nthreads):
        for k in range(t, order.shape[0], nthreads):
            i = order[k]
            _object_flow(masks, i + 1, lo[i, 0], hi[i, 0], lo[i, 1], hi[i, 1], mu, normalize)
    return mu


def bounding_boxes(labels: np.ndarray):
    """The box of each id 1..max of validated int32 labels (what ``scipy.ndimage.find_objects``
    gives, as arrays): ``lo`` and ``hi`` ``(max, ndim)``, ``lo`` -1 for absent ids."""
    return _bounding_boxes(labels.ravel(), np.array(labels.shape, np.int64), int(labels.max(initial=0)))


@numba.njit(cache=True)
def _bounding_boxes(labels, shape, n):
    ndim = shape.size
    lo = np.full((n, ndim), -1, np.int64)
    hi = np.zeros((n, ndim), np.int64)
    nx = shape[ndim - 1]
    row = np.zeros(ndim, np.int64)  # the current row's leading coordinates, as an odometer
    for r in range(labels.size // nx if nx else 0):
        for x in range(nx):
            v = labels[r * nx + x]
            if v <= 0:
                continue
            row[ndim - 1] = x
            i = v - 1
            for d in range(ndim):
                if lo[i, d] < 0 or row[d] < lo[i, d]:
                    lo[i, d] = row[d]
                hi[i, d] = max(hi[i, d], row[d] + 1)
        next_row(row, shape)
    return lo, hi


@numba.njit(cache=True, inline="always")
def next_row(row, shape):
    """Advance the leading coordinates `row` (all but the last axis) of a row-major scan of an
    array of `shape` to the next row, like an odometer."""
    d = shape.size - 2
    while d >= 0:
        row[d] += 1
        if row[d] < shape[d]:
            return
        row[d] = 0
        d -= 1


def _gradients_2d(masks: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(2, H, W) gradients of log(1 + T) of validated 2-D int32 labels: float32 unit vectors, or
    with ``normalize=False`` the raw float64 gradients."""
    lo, hi = bounding_boxes(masks)
    present = np.flatnonzero(lo[:, 0] >= 0)
    # cost of an object ~ iterations x pixels ~ (h + w) * h * w
    h, w = (hi[present] - lo[present]).T
    order = present[np.argsort(-(h + w) * h * w, kind="stable")]
    nthreads = max(1, min(numba.get_num_threads(), len(order)))
    mu = np.zeros((2,) + masks.shape, np.float32 if normalize else np.float64)
    return _flows_2d(masks, lo, hi, order, nthreads, mu, normalize)


def masks_to_flows(masks) -> np.ndarray:
    """Unit flow vectors of instance labels, as Cellpose computes its training targets.

    Parameters
    ----------
    masks : (H, W) or (Z, Y, X) array of int
        Instance labels: 0 is background, each object one positive id.  Ids need not be
        consecutive.

    Returns
    -------
    flows : (2, H, W) or (3, Z, Y, X) float32 array
        ``(dy, dx)`` (or ``(dz, dy, dx)``) unit vectors pointing towards each object's centre
        along the diffusion gradient; zero on the background.  In 3-D the flows are the sums of
        the 2-D flows of the slices along each axis, as Cellpose 2020 computes them (not renormalised).

    Raises
    ------
    ValueError
        If `masks` is not a 2-D or 3-D array of non-negative integers.

    Examples
    --------
    >>> masks = np.zeros((10, 10), np.int32)
    >>> masks[0:3, 2:4] = 1
    >>> masks[3:5, 6:10] = 2
    >>> flows = masks_to_flows(masks)
    >>> flows.shape
    (2, 10, 10)
    >>> np.round(flows[:, 1, 2], 4)  # points right, towards the centre of object 1
    array([0., 1.], dtype=float32)
    """
    masks = check_labels(masks, "masks", ndim=(2, 3))
    if masks.ndim == 2:
        return _gradients_2d(masks)
    nz, ny, nx = masks.shape
    mu = np.zeros((3, nz, ny, nx), np.float32)
    for z in range(nz):
        mu[[1, 2], z] += _gradients_2d(masks[z])
    for y in range(ny):
        mu[[0, 2], :, y] += _gradients_2d(np.ascontiguousarray(masks[:, y]))
    for x in range(nx):
        mu[[0, 1], :, :, x] += _gradients_2d(np.ascontiguousarray(masks[:, :, x]))
    return mu


def diameters(masks) -> float:
    """Median object diameter: the diameter of a disc with the median object area.

    As Cellpose 2020's ``diameters``: ``median(sqrt(areas)) / (sqrt(pi) / 2)``; 0 when there are no
    objects.  Only positive ids count as objects (Cellpose 2020 drops the first unique value, which is
    the same when there is background).

    Examples
    --------
    >>> masks = np.zeros((10, 10), np.int32)
    >>> masks[2:6, 2:6] = 1
    >>> round(diameters(masks), 3)
    4.514
    """
    masks = check_labels(masks, "masks", ndim=(2, 3))
    counts = np.bincount(masks.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.median(counts ** 0.5) / (np.pi ** 0.5 / 2))


def flows_to_rgb(flows, mask=None) -> np.ndarray:
    """The colour-wheel picture of a flow field (Cellpose 2020's ``dx_to_circ``).

    Hue encodes the direction, brightness the magnitude (relative to its 99th percentile).

    Parameters
    ----------
    flows : (2, H, W) array
        ``(dy, dx)`` flows, at any scale.
    mask : (H, W) array of bool, optional
        Pixels outside it are drawn black.

    Returns
    -------
    rgb : (H, W, 3) uint8 array
    """
    flows = np.asarray(flows, np.float64)
    if flows.ndim != 3 or flows.shape[0] != 2:
        raise ValueError(f"`flows` (shape {flows.shape}) must have shape (2, H, W) = (dy, dx)")
    mag = np.sqrt((flows ** 2).sum(axis=0))
    # brightness: magnitude over its 99th percentile (Cellpose 2020 normalises to the 1st-99th, whose
    # 1st percentile is the zero background; dividing only keeps a uniform field visible)
    mag = np.clip(mag / max(np.percentile(mag, 99), 1e-12), 0.0, 1.0)
    angles = np.arctan2(flows[1], flows[0]) + np.pi
    rgb = np.stack([(np.cos(angles + shift) + 1) / 2 for shift in (0, 2 * np.pi / 3, 4 * np.pi / 3)], -1)
    rgb *= mag[..., None]
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != flows.shape[1:]:
            raise ValueError(f"`mask` (shape {mask.shape}) must have the shape of the flows ({flows.shape[1:]})")
        rgb[~mask] = 0
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
