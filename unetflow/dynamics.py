"""Instance recovery for the flow model: follow the flows, gather the end points into masks.

Cellpose's 2020 algorithm (Stringer et al., Nature Methods 2021; ``cellpose/dynamics.py``, 2020):

1. ``cellprob > cellprob_threshold`` selects the cell pixels (cellprob is a logit: 0.0 is p = 0.5);
2. :func:`follow_flows` moves every pixel along ``dP * mask / FLOW_SCALE`` for ``niter`` Euler steps;
3. :func:`get_masks` histograms the end points, takes 5x5 local maxima with more than
   ``seed_threshold`` end points as seeds, grows each seed for ``expand_iters`` rounds into 3x3
   neighbours holding more than ``expand_threshold`` end points, and gives every pixel the label
   of the bin its end point fell into;
4. :func:`compute_masks` then drops masks whose flows disagree with the flows recomputed from the
   mask (``flow_threshold``), fills holes, drops masks under ``min_size`` and renumbers 1..N.

No TensorFlow is imported here.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import llvmlite.ir as ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .conventions import FLOW_SCALE
from .flows import next_row, bounding_boxes, masks_to_flows
from .validation import OptionsMixin, check_flows, check_labels

__all__ = ["FLOW_3D_OPTIONS", "follow_flows", "get_masks", "compute_masks", "flow_errors", "remove_bad_flow_masks",
           "fill_holes_and_remove_small_masks", "masks_before_checks", "finish_masks", "PostprocessConfig"]

logger = logging.getLogger(__name__)

#: A pixel moves only where ``|dy|`` of the field it is given exceeds this (Cellpose 2020's criterion).
MOVE_THRESHOLD = 1e-3
#: Size of the max filter that finds histogram peaks (Cellpose 2020's 5).
PEAK_FILTER_SIZE = 5


#: How masks are made from flows in 3-D.  Nearest-neighbour steps: on Cellpose's 3-D flows (sums of
#: the slices' 2-D flows) trilinear steps settle on two points in large objects and split them
#: (``benchmarks/bench_roundtrip.py --data`` gonuclear labels: AP@0.9 0.775 against 0.893).  No flow
#: check: the check recomputes 2-D flows, and a volume's flows are not those (Cellpose skips it in
#: 3-D too).
FLOW_3D_OPTIONS = {"interp": False, "flow_threshold": 0.0}


def _moving(dy) -> np.ndarray:
    """The pixels flow following moves by default: ``|dy| > MOVE_THRESHOLD`` (of the field it is given)."""
    return np.abs(dy) > MOVE_THRESHOLD


# ----------------------------------------------------------------------------- flow following

#: Pixels advanced together in one thread, as vector lanes: with a fixed count and unsigned
#: indices (no negative-index wraparound) LLVM turns the step into AVX-512/AVX2 gathers, and the
#: independent chains hide the memory latency of one pixel's step behind the others'.
_LANES = 64


@numba.njit(cache=True, inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@numba.njit(cache=True, inline="always")
def _load_lanes(py, px, p, inds, c):
    """Positions of the pixels of chunk `c` into the lanes (a short last chunk repeats its last
    pixel, so that every lane is valid).  The lanes are the caller's: returning arrays from here
    costs the caller's loop a third of its speed."""
    a = c * _LANES
    m = min(_LANES, inds.shape[0] - a)
    for k in range(_LANES):
        j = a + min(k, m - 1)
        py[k] = p[0, inds[j, 0], inds[j, 1]]
        px[k] = p[1, inds[j, 0], inds[j, 1]]


@numba.njit(cache=True, inline="always")
def _store_lanes(p, inds, c, py, px):
    a = c * _LANES
    for k in range(min(_LANES, inds.shape[0] - a)):
        p[0, inds[a + k, 0], inds[a + k, 1]] = py[k]
        p[1, inds[a + k, 0], inds[a + k, 1]] = px[k]


@intrinsic
def _float32_at(typingctx, pair, high):
    """The float32 stored in the low (``high=False``) or high 32 bits of the uint64 `pair`."""
    def codegen(context, builder, signature, args):
        word = builder.select(args[1], builder.lshr(args[0], ir.Constant(ir.IntType(64), 32)), args[0])
        return builder.bitcast(builder.trunc(word, ir.IntType(32)), ir.FloatType())
    return types.float32(types.uint64, types.boolean), codegen


#: Which half of a pixel's (dy, dx) pair, read as one uint64, holds dy: the first float in memory.
_DY_HIGH = sys.byteorder == "big"


# The field is read as one uint64 per pixel, its (dy, dx) pair: half the gathers of reading the two
# float32 apart, which is what limits the speed.  Two kernels, not one with an `interp` branch:
# with both loops in one function LLVM vectorises the bilinear one a third slower, and a step
# kernel passed as an argument is not cached by numba (2 s of compilation in every process).
# Both do float32 arithmetic, and clamping to the image by comparisons gives the same numbers as
# Cellpose 2020's ``min(shape - 1, max(0, p + step))``.

@numba.njit(cache=True, parallel=True)
def _steps_bilinear(p, dP, inds, niter):
    """Euler steps of the pixels `inds` with the step read by bilinear interpolation (current
    Cellpose) from the channels-last ``(H, W, 2)`` field `dP`."""
    ny, nx = dP.shape[0], dP.shape[1]
    pairs = dP.reshape(ny * nx * 2).view(np.uint64)
    zero = np.float32(0)
    one = np.float32(1)
    ymax = np.float32(ny - 1)
    xmax = np.float32(nx - 1)
    u1 = np.uint64(1)
    row = np.uint64(nx)
    ylast = np.uint64(ny - 1)
    xlast = np.uint64(nx - 1)
    for c in numba.prange((inds.shape[0] + _LANES - 1) // _LANES):
        py = np.empty(_LANES, np.float32)
        px = np.empty(_LANES, np.float32)
        _load_lanes(py, px, p, inds, c)
        for _ in range(niter):
            for k in range(_LANES):
                yy = py[k]
                xx = px[k]
                y0 = np.uint64(yy)  # positions are >= 0: truncation is Cellpose's int()
                x0 = np.uint64(xx)
                y1 = min(y0 + u1, ylast)
                x1 = min(x0 + u1, xlast)
                wy = yy - np.float32(y0)
                wx = xx - np.float32(x0)
                v00 = pairs[y0 * row + x0]
                v01 = pairs[y0 * row + x1]
                v10 = pairs[y1 * row + x0]
                v11 = pairs[y1 * row + x1]
                sy = ((one - wy) * ((one - wx) * _float32_at(v00, _DY_HIGH) + wx * _float32_at(v01, _DY_HIGH))
                      + wy * ((one - wx) * _float32_at(v10, _DY_HIGH) + wx * _float32_at(v11, _DY_HIGH)))
                sx = ((one - wy) * ((one - wx) * _float32_at(v00, not _DY_HIGH) + wx * _float32_at(v01, not _DY_HIGH))
                      + wy * ((one - wx) * _float32_at(v10, not _DY_HIGH) + wx * _float32_at(v11, not _DY_HIGH)))
                py[k] = _clamp(yy + sy, zero, ymax)
                px[k] = _clamp(xx + sx, zero, xmax)
        _store_lanes(p, inds, c, py, px)
    return p


@numba.njit(cache=True, parallel=True)
def _steps_nearest(p, dP, inds, niter):
    """Euler steps with the step read at the truncated position (Cellpose 2020)."""
    ny, nx = dP.shape[0], dP.shape[1]
    pairs = dP.reshape(ny * nx * 2).view(np.uint64)
    zero = np.float32(0)
    ymax = np.float32(ny - 1)
    xmax = np.float32(nx - 1)
    row = np.uint64(nx)
    for c in numba.prange((inds.shape[0] + _LANES - 1) // _LANES):
        py = np.empty(_LANES, np.float32)
        px = np.empty(_LANES, np.float32)
        _load_lanes(py, px, p, inds, c)
        for _ in range(niter):
            for k in range(_LANES):
                v = pairs[np.uint64(py[k]) * row + np.uint64(px[k])]
                py[k] = _clamp(py[k] + _float32_at(v, _DY_HIGH), zero, ymax)
                px[k] = _clamp(px[k] + _float32_at(v, not _DY_HIGH), zero, xmax)
        _store_lanes(p, inds, c, py, px)
    return p


@numba.njit(cache=True, parallel=True)
def _steps_3d(p, dP, inds, niter):
    """Euler steps of the voxels `inds` with the step read at the truncated position (Cellpose's 3-D)."""
    nz, ny, nx = dP.shape[1], dP.shape[2], dP.shape[3]
    for j in numba.prange(inds.shape[0]):
        z = inds[j, 0]
        y = inds[j, 1]
        x = inds[j, 2]
        pz = p[0, z, y, x]
        py = p[1, z, y, x]
        px = p[2, z, y, x]
        for _ in range(niter):
            i0 = int(pz)
            i1 = int(py)
            i2 = int(px)
            sz = dP[0, i0, i1, i2]
            sy = dP[1, i0, i1, i2]
            sx = dP[2, i0, i1, i2]
            pz = np.float32(min(nz - 1, max(0, pz + sz)))
            py = np.float32(min(ny - 1, max(0, py + sy)))
            px = np.float32(min(nx - 1, max(0, px + sx)))
        p[0, z, y, x] = pz
        p[1, z, y, x] = py
        p[2, z, y, x] = px
    return p


@numba.njit(cache=True, inline="always")
def _trilinear(dP, c, z0, y0, x0, z1, y1, x1, wz, wy, wx):
    """Channel `c` of `dP` at ``(z0 + wz, y0 + wy, x0 + wx)`` by trilinear interpolation."""
    one = np.float32(1)
    a = (one - wx) * dP[c, z0, y0, x0] + wx * dP[c, z0, y0, x1]
    b = (one - wx) * dP[c, z0, y1, x0] + wx * dP[c, z0, y1, x1]
    d = (one - wx) * dP[c, z1, y0, x0] + wx * dP[c, z1, y0, x1]
    e = (one - wx) * dP[c, z1, y1, x0] + wx * dP[c, z1, y1, x1]
    return (one - wz) * ((one - wy) * a + wy * b) + wz * ((one - wy) * d + wy * e)


@numba.njit(cache=True, parallel=True)
def _steps_trilinear(p, dP, inds, niter):
    """Euler steps of the voxels `inds` with the step read by trilinear interpolation of the
    ``(3, Z, Y, X)`` field `dP`: the 3-D form of :func:`_steps_bilinear`.  Nearest-neighbour steps
    leave a voxel stuck where the truncated field points back at it, which splits thin or
    elongated objects; interpolated steps let it slide to the centre."""
    nz, ny, nx = dP.shape[1], dP.shape[2], dP.shape[3]
    zmax = np.float32(nz - 1)
    ymax = np.float32(ny - 1)
    xmax = np.float32(nx - 1)
    zero = np.float32(0)
    for j in numba.prange(inds.shape[0]):
        z = inds[j, 0]
        y = inds[j, 1]
        x = inds[j, 2]
        pz = p[0, z, y, x]
        py = p[1, z, y, x]
        px = p[2, z, y, x]
        for _ in range(niter):
            z0 = int(pz)  # positions are >= 0: truncation is the floor
            y0 = int(py)
            x0 = int(px)
            z1 = min(z0 + 1, nz - 1)
            y1 = min(y0 + 1, ny - 1)
            x1 = min(x0 + 1, nx - 1)
            wz = pz - np.float32(z0)
            wy = py - np.float32(y0)
            wx = px - np.float32(x0)
            sz = _trilinear(dP, 0, z0, y0, x0, z1, y1, x1, wz, wy, wx)
            sy = _trilinear(dP, 1, z0, y0, x0, z1, y1, x1, wz, wy, wx)
            sx = _trilinear(dP, 2, z0, y0, x0, z1, y1, x1, wz, wy, wx)
            pz = _clamp(pz + sz, zero, zmax)
            py = _clamp(py + sy, zero, ymax)
            px = _clamp(px + sx, zero, xmax)
        p[0, z, y, x] = pz
        p[1, z, y, x] = py
        p[2, z, y, x] = px
    return p


def follow_flows(dP, niter: int = 200, interp: bool = False, mask=None) -> np.ndarray:
    """Follow a flow field from every pixel for ``niter`` Euler steps of size 1.

    Parameters
    ----------
    dP : (2, H, W) or (3, Z, Y, X) array
        The field to integrate, ``(dy, dx)`` order.  Callers pass ``dP * mask / FLOW_SCALE``
        (as :func:`compute_masks` does), so a step is at most a fifth of a pixel.
    niter : int
        Number of steps.
    interp : bool
        False: the step is read at the truncated (integer) position, Cellpose 2020's scheme.
        True: it is read by bilinear interpolation, as current Cellpose does in 2-D, and by
        trilinear interpolation in 3-D.
    mask : array of bool, optional
        The pixels to follow.  Default: where ``|dP[0]| > 1e-3``, Cellpose 2020's criterion (which
        leaves pixels whose flow is purely horizontal where they are).

    Returns
    -------
    p : (2, H, W) or (3, Z, Y, X) float32 array
        The end point of every pixel; pixels that are not followed stay where they are.

    Raises
    ------
    ValueError
        If `dP` has the wrong shape or contains NaN or inf.

    Examples
    --------
    >>> dP = np.zeros((2, 1, 6), np.float32)
    >>> dP[:, 0, :3] = [[0.01], [0.2]]
    >>> np.round(follow_flows(dP, niter=20)[1, 0], 2)  # pixels 0-2 flow right (0.2 a step) until x = 3
    array([3., 3., 3., 3., 4., 5.], dtype=float32)
    """
    dP = check_flows(dP, "dP")
    if int(niter) != niter or niter < 0:
        raise ValueError(f"`niter` must be a non-negative integer, got {niter!r}")
    shape = dP.shape[1:]
    if mask is None:
        mask = _moving(dP[0])
    else:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"`mask` (shape {mask.shape}) must have the spatial shape of `dP` ({shape})")
    if dP.shape[0] == 2:
        return _follow_2d(np.ascontiguousarray(np.moveaxis(dP, 0, -1)), mask, int(niter), interp)
    p = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    inds = np.argwhere(mask).astype(np.int64)
    if inds.size == 0 or niter == 0:
        return p
    return (_steps_trilinear if interp else _steps_3d)(p, np.ascontiguousarray(dP), inds, int(niter))


def _follow_2d(field, mask, niter: int, interp: bool) -> np.ndarray:
    """:func:`follow_flows` for a validated channels-last ``(H, W, 2)`` field."""
    p = _positions_2d(*mask.shape)
    inds = np.argwhere(mask)
    if inds.size == 0 or niter == 0:
        return p
    return (_steps_bilinear if interp else _steps_nearest)(p, field, inds.astype(np.int64), niter)


@numba.njit(cache=True, parallel=True)
def _positions_2d(ny, nx):
    """``(2, H, W)`` float32 pixel coordinates (what ``np.meshgrid`` gives, without its copies)."""
    p = np.empty((2, ny, nx), np.float32)
    for y in numba.prange(ny):
        for x in range(nx):
            p[0, y, x] = y
            p[1, y, x] = x
    return p


@numba.njit(cache=True, parallel=True)
def _masked_field(dP, iscell):
    """``dP * iscell / FLOW_SCALE``, channels-last, in one pass (float32, as NumPy computes it)."""
    ndim, ny, nx = dP.shape
    out = np.empty((ny, nx, ndim), np.float32)
    scale = np.float32(FLOW_SCALE)
    for y in numba.prange(ny):
        for x in range(nx):
            m = np.float32(1) if iscell[y, x] else np.float32(0)
            for c in range(ndim):
                out[y, x, c] = dP[c, y, x] * m / scale
    return out


# ----------------------------------------------------------------------------- seeds and masks

@numba.njit(cache=True)
def _strides(shape):
    """Row-major strides (in elements) of an array of `shape`."""
    strides = np.ones(shape.size, np.int64)
    for d in range(shape.size - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return strides


@numba.njit(cache=True)
def _window_offsets(ndim, width):
    """The ``width ** ndim`` offsets of a centred window (`width` odd), in row-major order."""
    offs = np.zeros((width ** ndim, ndim), np.int64)
    for k in range(width ** ndim):
        r = k
        for d in range(ndim - 1, -1, -1):
            offs[k, d] = r % width - width // 2
            r //= width
    return offs


@numba.njit(cache=True, inline="always")
def _unravel(f, strides, coord):
    """Write into `coord` the coordinates of flat index `f` of a row-major array with `strides`."""
    for d in range(strides.size):
        coord[d] = f // strides[d]
        f -= coord[d] * strides[d]


@numba.njit(cache=True)
def _bin_end_points(p, iscell, shape0, rpad):
    """Histogram of end points ``p`` ``(ndim, N)`` over the image padded by `rpad` per side.

    Pixels outside `iscell` count at their own position.  Returns the histogram (flat, int32) and
    each pixel's bin.  As Cellpose 2020: positions truncated to integers, then clipped to the padding.
    """
    ndim, n = p.shape
    hshape = shape0 + 2 * rpad
    hstrides = _strides(hshape)
    h = np.zeros(np.prod(hshape), np.int32)
    bins = np.empty(n, np.int64)
    nx = shape0[ndim - 1]
    row = np.zeros(ndim, np.int64)  # the leading coordinates of the current row, as an odometer
    for r in range(n // nx):
        base = rpad  # bin of the row's own position, without the last coordinate
        for d in range(ndim - 1):
            base += (row[d] + rpad) * hstrides[d]
        last = ndim - 1
        for x in range(nx):
            k = r * nx + x
            if iscell[k]:  # the last axis has stride 1: written out, the common 2-D case needs no loop
                f = min(max(np.int64(np.int32(p[last, k])) + rpad, 0), hshape[last] - 1)
                for d in range(last):
                    f += min(max(np.int64(np.int32(p[d, k])) + rpad, 0), hshape[d] - 1) * hstrides[d]
            else:
                f = base + x
            bins[k] = f
        for k in range(r * nx, (r + 1) * nx):
            h[bins[k]] += 1
        next_row(row, shape0)
    return h, bins


@numba.njit(cache=True)
def _find_seeds(h, hshape, threshold, width):
    """Row-major coordinates of the bins counting more than `threshold` that no bin of their
    `width`-wide window exceeds (``h >= maximum_filter(h, width)``: scipy's reflecting border
    repeats only bins inside, so clipping the window is the same)."""
    ndim = hshape.size
    strides = _strides(hshape)
    offs = _window_offsets(ndim, width)
    found = []
    coord = np.empty(ndim, np.int64)
    for f in range(h.size):
        if not h[f] > threshold:
            continue
        _unravel(f, strides, coord)
        peak = True
        for k in range(offs.shape[0]):
            g = 0
            for d in range(ndim):
                c = coord[d] + offs[k, d]
                if c < 0 or c >= hshape[d]:
                    g = -1
                    break
                g += c * strides[d]
            if g >= 0 and h[g] > h[f]:
                peak = False
                break
        if peak:
            found.append(f)
    seeds = np.empty((len(found), ndim), np.int64)
    for s in range(len(found)):
        _unravel(found[s], strides, seeds[s])
    return seeds


@numba.njit(cache=True)
def _labels_of_bins(M, bins, max_size):
    """Each pixel's label, the label of its end point's bin; labels over `max_size` pixels are
    dropped and the rest renumbered 1..N in order."""
    out = np.empty(bins.size, np.int32)
    counts = np.zeros(M.max() + 1, np.int64)
    for k in range(bins.size):
        out[k] = M[bins[k]]
        counts[out[k]] += 1
    lut = np.zeros(counts.size, np.int32)
    j = 0
    for i in range(1, counts.size):
        if counts[i] > 0 and not counts[i] > max_size:
            j += 1
            lut[i] = j
    for k in range(bins.size):
        out[k] = lut[out[k]]
    return out


@numba.njit(cache=True)
def _grow_seeds(h, seeds, expand_threshold, expand_iters):
    """Label the neighbourhood of each seed in the histogram, later seeds overwriting earlier ones.

    Each of ``expand_iters`` rounds replaces the set by the 3x3 (3x3x3) neighbours of its members
    whose count exceeds ``expand_threshold`` (Cellpose 2020's ``h[newpix] > 2``); Cellpose 2020's list with
    repeats and this set give the same labels.  Works on flat indices of ``h``.
    """
    ndim = seeds.shape[1]
    shape = np.array(h.shape, np.int64)
    hf = h.ravel()
    strides = _strides(shape)
    offs = _window_offsets(ndim, 3)
    nnb = offs.shape[0]
    M = np.zeros(h.size, np.int32)
    stamp = np.zeros(h.size, np.int64)  # stamp[f] == tag: f already in the current round's set
    cap = (2 * expand_iters + 1) ** ndim  # the set never leaves this window around its seed
    cur = np.empty((cap, ndim), np.int64)
    new = np.empty((cap, ndim), np.int64)
    tag = 0
    for s in range(seeds.shape[0]):
        cur[0] = seeds[s]
        nm = 1
        for _ in range(expand_iters):
            tag += 1
            nn = 0
            for m in range(nm):
                for k in range(nnb):
                    flat = 0
                    inside = True
                    for d in range(ndim):
                        c = cur[m, d] + offs[k, d]
                        if c < 0 or c >= shape[d]:
                            inside = False
                            break
                        flat += c * strides[d]
                    if inside and stamp[flat] != tag and hf[flat] > expand_threshold:
                        stamp[flat] = tag
                        for d in range(ndim):
                            new[nn, d] = cur[m, d] + offs[k, d]
                        nn += 1
            cur, new = new, cur
            nm = nn
        for m in range(nm):
            flat = 0
            for d in range(ndim):
                flat += cur[m, d] * strides[d]
            M[flat] = s + 1
    return M.reshape(h.shape)


def get_masks(p, iscell=None, *, seed_threshold: float = 10, expand_threshold: float = 2,
              expand_iters: int = 5, max_size_fraction: float = 0.4, rpad: int = 20,
              return_seeds: bool = False):
    """Masks from the end points of flow following (Cellpose 2020's ``get_masks``).

    Parameters
    ----------
    p : (2, H, W) or (3, Z, Y, X) array
        End points from :func:`follow_flows`.
    iscell : (H, W) array of bool, optional
        Pixels outside it are put back at their own position before the histogram.
    seed_threshold : float
        A histogram peak (5x5 local maximum) is a seed when it counts more than this many end
        points (10 in Cellpose; the 10x10 two-object example in tests/test_postprocess.py needs 2).
    expand_threshold : float
        Seeds grow into neighbouring bins counting more than this.
    expand_iters : int
        Rounds of 3x3 growth.
    max_size_fraction : float
        Masks larger than this fraction of the image are removed.
    rpad : int
        Zero padding of the histogram (keeps peaks at the image border findable).
    return_seeds : bool
        Also return the seed coordinates ``(n_seeds, ndim)`` in image coordinates.

    Returns
    -------
    masks : (H, W) or (Z, Y, X) int32 array
        Labels 1..N, 0 background.
    seeds : (n_seeds, ndim) int array
        Only if `return_seeds`.
    """
    p = np.asarray(p, np.float32)
    if p.ndim not in (3, 4) or p.shape[0] != p.ndim - 1:
        raise ValueError(f"`p` (shape {p.shape}) must have shape (2, H, W) or (3, Z, Y, X)")
    shape0 = p.shape[1:]
    dims = p.shape[0]
    if iscell is not None:
        iscell = np.asarray(iscell, bool)
        if iscell.shape != shape0:
            raise ValueError(f"`iscell` (shape {iscell.shape}) must have the shape of `p` ({shape0})")
    hshape = np.array(shape0, np.int64) + 2 * rpad
    h, bins = _bin_end_points(np.ascontiguousarray(p).reshape(dims, -1),
                              np.ones(p[0].size, bool) if iscell is None else iscell.ravel(),
                              np.array(shape0, np.int64), int(rpad))
    seeds = _find_seeds(h, hshape, float(seed_threshold), PEAK_FILTER_SIZE)  # row-major, as np.nonzero
    M = _grow_seeds(h.reshape(tuple(hshape)), seeds, float(expand_threshold), int(expand_iters))
    masks = _labels_of_bins(M.ravel(), bins, float(np.prod(shape0) * max_size_fraction)).reshape(shape0)
    if return_seeds:
        return masks, seeds - rpad
    return masks


# ----------------------------------------------------------------------------- quality control

def flow_errors(masks, dP) -> np.ndarray:
    """Per-mask flow error: mean over the mask of ``sum_k (flow_k(mask) - dP_k / FLOW_SCALE)**2``.

    ``flow_k(mask)`` are the flows :func:`masks_to_flows` computes from the masks themselves.
    Returns an array of length ``masks.max()`` (entry i is mask i + 1; NaN for absent ids).
    """
    masks = check_labels(masks, "masks", ndim=(2, 3))
    return _flow_errors(masks, check_flows(dP, "dP", shape=masks.shape))


def _flow_errors(masks, dP):
    n = int(masks.max())
    if n == 0:
        return np.zeros(0)
    ndim = dP.shape[0]
    sums, counts = _error_sums(masks_to_flows(masks).reshape(ndim, -1), dP.reshape(ndim, -1), masks.ravel(), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[1:] / counts[1:]


@numba.njit(cache=True)
def _error_sums(mu, dP, labels, n):
    """Per label: the sum of ``sum_k (mu_k - dP_k / FLOW_SCALE) ** 2`` and the pixel count, in one
    pass; float32 squares summed in float64 in pixel order, the very numbers of NumPy's
    ``((mu - dP / FLOW_SCALE) ** 2).sum(0)`` and ``bincount``."""
    scale = np.float32(FLOW_SCALE)
    sq = np.zeros(labels.size, np.float32)
    for d in range(mu.shape[0]):  # a separate, vectorised pass: the sums below are a scatter
        for k in range(labels.size):
            e = mu[d, k] - dP[d, k] / scale
            sq[k] += e * e
    sums = np.zeros(n + 1)
    counts = np.zeros(n + 1, np.int64)
    for k in range(labels.size):
        if labels[k]:  # the background's sum is not used: skipping it breaks its long chain of additions
            sums[labels[k]] += sq[k]
            counts[labels[k]] += 1
    return sums, counts


def remove_bad_flow_masks(masks, dP, threshold: float = 0.4) -> np.ndarray:
    """Masks whose :func:`flow_errors` exceed `threshold` set to 0 (a new array)."""
    return _drop_ids(check_labels(masks, "masks", ndim=(2, 3)),
                     1 + np.flatnonzero(flow_errors(masks, dP) > threshold))


@numba.njit(cache=True)
def _fill_and_filter(masks, shape, lo, hi, min_size):
    """:func:`fill_holes_and_remove_small_masks` on flat labels: objects (boxes ``lo:hi``, ``lo``
    -1 when absent) in id order, each written with its holes filled, later objects over earlier.

    A hole is a background region (face-connected, as scipy's ``binary_fill_holes``) of the box
    that does not reach the box's border.
    """
    ndim = shape.size
    gstrides = _strides(shape)
    out = np.zeros(masks.size, np.int32)
    coord = np.empty(ndim, np.int64)
    j = 0
    for i in range(lo.shape[0]):
        if lo[i, 0] < 0:
            continue
        label = i + 1
        bshape = hi[i] - lo[i]
        bstrides = _strides(bshape)
        size = np.prod(bshape)
        state = np.zeros(size, np.uint8)  # 1: the object, 2: background reached from the border
        where = np.empty(size, np.int64)  # flat index in `masks` of each box pixel
        stack = np.empty(size, np.int64)
        top = 0
        npix = 0
        for q in range(size):
            _unravel(q, bstrides, coord)
            g = 0
            border = False
            for d in range(ndim):
                g += (lo[i, d] + coord[d]) * gstrides[d]
                border = border or coord[d] == 0 or coord[d] == bshape[d] - 1
            where[q] = g
            if masks[g] == label:
                state[q] = 1
                npix += 1
            elif border:
                state[q] = 2
                stack[top] = q
                top += 1
        if npix == 0 or (min_size > 0 and npix < min_size):
            continue
        while top > 0:
            top -= 1
            q = stack[top]
            _unravel(q, bstrides, coord)
            for d in range(ndim):
                for step in (-1, 1):
                    c = coord[d] + step
                    if 0 <= c < bshape[d]:
                        nq = q + step * bstrides[d]
                        if state[nq] == 0:
                            state[nq] = 2
                            stack[top] = nq
                            top += 1
        j += 1
        for q in range(size):
            if state[q] != 2:
                out[where[q]] = j
    return out


def fill_holes_and_remove_small_masks(masks, min_size: int = 15) -> np.ndarray:
    """Fill each mask's holes, drop masks under `min_size` pixels (before filling), renumber 1..N."""
    masks = check_labels(masks, "masks", ndim=(2, 3))
    lo, hi = bounding_boxes(masks)
    return _fill_and_filter(masks.ravel(), np.array(masks.shape, np.int64), lo, hi, int(min_size)).reshape(masks.shape)


# ----------------------------------------------------------------------------- compute_masks

@dataclass(frozen=True)
class PostprocessConfig(OptionsMixin):
    """Options of :func:`compute_masks` (the defaults are Cellpose's).

    Attributes
    ----------
    niter : int
        Euler steps of flow following.
    cellprob_threshold : float
        Threshold on the cellprob *logit* (0.0 is probability 0.5).
    flow_threshold : float or None
        Masks whose flow error exceeds this are removed; 0 or None disables the check.
    min_size : int
        Masks smaller than this (pixels) are removed.
    interp : bool
        Bilinear interpolation of the flows while following (current Cellpose); False is Cellpose 2020's
        truncated-position scheme.
    follow : {"seed", "cellprob"}
        Which pixels are followed: "seed" (the default), where ``|dy| > 1e-3`` (Cellpose 2020's criterion, which
        leaves pixels with a purely horizontal flow in place); "cellprob", every pixel above the
        cellprob threshold (current Cellpose; recovers elongated objects better, see
        benchmarks/bench_roundtrip.py).
    seed_threshold, expand_threshold, expand_iters, max_size_fraction, rpad
        See :func:`get_masks`.
    """

    niter: int = 200
    cellprob_threshold: float = 0.0
    flow_threshold: float | None = 0.4
    min_size: int = 15
    interp: bool = False
    follow: str = "seed"
    seed_threshold: float = 10
    expand_threshold: float = 2
    expand_iters: int = 5
    max_size_fraction: float = 0.4
    rpad: int = 20



def compute_masks(dP, cellprob, config: PostprocessConfig | None = None, *, return_diagnostics: bool = False,
                  **options):
    """Instance labels from predicted flows and cellprob logits.

    Parameters
    ----------
    dP : (2, H, W) or (3, Z, Y, X) array
        Predicted flows on the network's scale (``FLOW_SCALE`` times unit vectors).
    cellprob : (H, W) or (Z, Y, X) array
        Predicted cell-probability *logits*.
    config : PostprocessConfig, optional
        Options; keyword arguments (``niter``, ``cellprob_threshold``, ``flow_threshold``,
        ``min_size``, ``interp``, ``seed_threshold``, ...) override its fields.
    return_diagnostics : bool
        Also return a dict with the end points ``p``, the cell mask ``iscell``, the ``seeds``, the
        per-mask ``flow_errors`` (before the flow check) and the masks ``removed_by_flow_check``.

    Returns
    -------
    masks : int32 array
        Labels 1..N, 0 background.
    diagnostics : dict
        Only if `return_diagnostics`.

    Raises
    ------
    ValueError
        If `dP` and `cellprob` have different spatial shapes, `dP` has the wrong number of
        components, or either holds NaN or inf (an error, not zeros: non-finite outputs mean a
        broken network or file).

    Examples
    --------
    What a perfect network predicts (flows on the ``FLOW_SCALE`` scale, confident logits) gives
    the labels back, here in the Cellpose-like mode the experiment configs use:

    >>> from unetflow.flows import masks_to_flows
    >>> labels = np.zeros((24, 24), np.int32)
    >>> labels[2:12, 3:11] = 1; labels[12:21, 9:22] = 2
    >>> dP = 5 * masks_to_flows(labels)
    >>> cellprob = np.where(labels > 0, 10.0, -10.0)
    >>> masks = compute_masks(dP, cellprob, follow="cellprob", interp=True)
    >>> bool((masks == labels).all())
    True
    """
    config = (config or PostprocessConfig()).with_overrides(**options)
    masks, diag = masks_before_checks(dP, cellprob, config)
    masks = finish_masks(masks, diag, config)
    return (masks, diag) if return_diagnostics else masks


def masks_before_checks(dP, cellprob, config: PostprocessConfig):
    """The first stage of :func:`compute_masks`: masks from flow following, before the flow check.

    Returns the masks and the diagnostics dict, whose ``flow_errors`` hold every mask's flow error
    (computed only when ``config.flow_threshold`` is set).  Split from :func:`finish_masks` so that
    threshold tuning can try several flow thresholds on one flow-following pass.
    """
    if config.follow not in ("seed", "cellprob"):
        raise ValueError(f"`follow` must be 'seed' or 'cellprob', got {config.follow!r}")
    dP = check_flows(dP, "dP")
    cellprob = np.asarray(cellprob, np.float32)
    if cellprob.shape != dP.shape[1:]:
        raise ValueError(f"`cellprob` (shape {cellprob.shape}) must have the spatial shape of `dP` "
                         f"(shape {dP.shape})")
    if not np.all(np.isfinite(cellprob)):
        raise ValueError(f"`cellprob` has {np.count_nonzero(~np.isfinite(cellprob))} NaN or inf values")
    iscell = cellprob > config.cellprob_threshold
    diag = {"iscell": iscell, "p": None, "seeds": np.zeros((0, dP.shape[0]), int),
            "flow_errors": np.zeros(0), "removed_by_flow_check": np.zeros(0, int)}
    if not iscell.any():
        return np.zeros(cellprob.shape, np.int32), diag
    follow = iscell if config.follow == "cellprob" else None
    if dP.shape[0] == 2:  # the same as follow_flows, without its checks and copies
        field = _masked_field(dP, iscell)
        follow = _moving(field[..., 0]) if follow is None else follow
        p = _follow_2d(field, follow, config.niter, config.interp)
    else:
        p = follow_flows(dP * iscell / FLOW_SCALE, niter=config.niter, interp=config.interp, mask=follow)
    masks, seeds = get_masks(p, iscell, seed_threshold=config.seed_threshold,
                             expand_threshold=config.expand_threshold, expand_iters=config.expand_iters,
                             max_size_fraction=config.max_size_fraction, rpad=config.rpad, return_seeds=True)
    diag.update(p=p, seeds=seeds)
    if masks.max() > 0 and config.flow_threshold:
        diag["flow_errors"] = _flow_errors(masks, dP)
    return masks, diag


def finish_masks(masks, diag, config: PostprocessConfig):
    """The second stage of :func:`compute_masks`: flow check, hole filling, size filter, renumbering."""
    if config.flow_threshold and len(diag["flow_errors"]):
        diag["removed_by_flow_check"] = 1 + np.flatnonzero(diag["flow_errors"] > config.flow_threshold)
        masks = _drop_ids(masks, diag["removed_by_flow_check"])
    return fill_holes_and_remove_small_masks(masks, min_size=config.min_size)


def _drop_ids(masks, ids):
    if len(ids):
        masks = masks.copy()
        masks[np.isin(masks, ids)] = 0
    return masks
