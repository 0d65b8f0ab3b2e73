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
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

from .conventions import FLOW_SCALE
from .flows import masks_to_flows
from .validation import OptionsMixin, check_flows, check_labels, relabel_sequential

__all__ = ["follow_flows", "get_masks", "compute_masks", "flow_errors", "remove_bad_flow_masks",
           "fill_holes_and_remove_small_masks", "masks_before_checks", "finish_masks", "PostprocessConfig"]

logger = logging.getLogger(__name__)

#: A pixel moves only where ``|dy|`` of the field it is given exceeds this (Cellpose 2020's criterion).
MOVE_THRESHOLD = 1e-3
#: Size of the max filter that finds histogram peaks (Cellpose 2020's 5).
PEAK_FILTER_SIZE = 5


# ----------------------------------------------------------------------------- flow following

#: Pixels advanced together in one thread: their independent dependency chains let the CPU
#: overlap the memory latency of one pixel's step with the others' (about 4x faster than one by one).
_INTERLEAVE = 16


@numba.njit(cache=True, parallel=True)
def _steps_2d(p, dP, inds, niter, interp):
    """Euler integration of the listed pixels, in parallel chunks of ``_INTERLEAVE`` pixels.

    ``dP`` is channels-last ``(H, W, 2)`` here so that both components of a step share a cache
    line.  ``interp=False`` is Cellpose 2020's scheme: the step is read at the truncated position.
    The arithmetic is float32, and clamping to the image by comparisons gives the same numbers as
    Cellpose 2020's ``min(shape - 1, max(0, p + step))``.
    """
    ny, nx = dP.shape[0], dP.shape[1]
    ymax = np.float32(ny - 1)
    xmax = np.float32(nx - 1)
    zero = np.float32(0)
    one = np.float32(1)
    n = inds.shape[0]
    for c in numba.prange((n + _INTERLEAVE - 1) // _INTERLEAVE):
        a = c * _INTERLEAVE
        m = min(_INTERLEAVE, n - a)
        py = np.empty(_INTERLEAVE, np.float32)
        px = np.empty(_INTERLEAVE, np.float32)
        for k in range(m):
            py[k] = p[0, inds[a + k, 0], inds[a + k, 1]]
            px[k] = p[1, inds[a + k, 0], inds[a + k, 1]]
        for _ in range(niter):
            for k in range(m):
                yy = py[k]
                xx = px[k]
                if interp:
                    y0 = int(yy)
                    x0 = int(xx)
                    y1 = min(y0 + 1, ny - 1)
                    x1 = min(x0 + 1, nx - 1)
                    wy = yy - np.float32(y0)
                    wx = xx - np.float32(x0)
                    sy = ((one - wy) * ((one - wx) * dP[y0, x0, 0] + wx * dP[y0, x1, 0])
                          + wy * ((one - wx) * dP[y1, x0, 0] + wx * dP[y1, x1, 0]))
                    sx = ((one - wy) * ((one - wx) * dP[y0, x0, 1] + wx * dP[y0, x1, 1])
                          + wy * ((one - wx) * dP[y1, x0, 1] + wx * dP[y1, x1, 1]))
                else:
                    p0 = int(yy)
                    p1 = int(xx)
                    sy = dP[p0, p1, 0]
                    sx = dP[p0, p1, 1]
                yy = yy + sy
                xx = xx + sx
                py[k] = zero if yy < zero else (ymax if yy > ymax else yy)
                px[k] = zero if xx < zero else (xmax if xx > xmax else xx)
        for k in range(m):
            p[0, inds[a + k, 0], inds[a + k, 1]] = py[k]
            p[1, inds[a + k, 0], inds[a + k, 1]] = px[k]
    return p


@numba.njit(cache=True, parallel=True)
def _steps_3d(p, dP, inds, niter):
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
        True: it is read by bilinear interpolation, as current Cellpose does (2-D only).
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
    p = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    if mask is None:
        mask = np.abs(dP[0]) > MOVE_THRESHOLD
    else:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"`mask` (shape {mask.shape}) must have the spatial shape of `dP` ({shape})")
    inds = np.argwhere(mask).astype(np.int64)
    if inds.size == 0 or niter == 0:
        return p
    if dP.shape[0] == 2:
        dP_last = np.ascontiguousarray(np.moveaxis(dP, 0, -1))
        return _steps_2d(p, dP_last, inds, int(niter), bool(interp))
    dP = np.ascontiguousarray(dP)
    if interp:
        raise ValueError("`interp=True` is implemented for 2-D flows only")
    return _steps_3d(p, dP, inds, int(niter))


# ----------------------------------------------------------------------------- seeds and masks

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
    strides = np.ones(ndim, np.int64)
    for d in range(ndim - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    nnb = 3 ** ndim
    offs = np.zeros((nnb, ndim), np.int64)
    for k in range(nnb):
        r = k
        for d in range(ndim - 1, -1, -1):
            offs[k, d] = r % 3 - 1
            r //= 3
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
    hshape = tuple(n + 2 * rpad for n in shape0)
    pflows = []
    for i in range(dims):
        pi = p[i].astype(np.int32)
        if iscell is not None:  # pixels outside the cells count at their own position
            own = np.arange(shape0[i], dtype=np.int32).reshape([-1 if d == i else 1 for d in range(dims)])
            pi = np.where(iscell, pi, own)
        pflows.append(np.clip(pi + rpad, 0, hshape[i] - 1).ravel())
    flat = np.ravel_multi_index(tuple(pflows), hshape)
    h = np.bincount(flat, minlength=int(np.prod(hshape))).reshape(hshape).astype(np.int32)
    hmax = ndimage.maximum_filter(h, size=PEAK_FILTER_SIZE)
    seeds = np.argwhere((h >= hmax) & (h > seed_threshold))  # row-major, as Cellpose 2020's np.nonzero
    M = _grow_seeds(h, seeds.astype(np.int64), float(expand_threshold), int(expand_iters))
    M0 = M.ravel()[flat].reshape(shape0)
    counts = np.bincount(M0.ravel())
    big = np.flatnonzero(counts > np.prod(shape0) * max_size_fraction)
    big = big[big > 0]
    if big.size:
        M0[np.isin(M0, big)] = 0
    masks = relabel_sequential(M0)
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
    dP_masks = masks_to_flows(masks)
    sq = ((dP_masks - dP / FLOW_SCALE) ** 2).sum(axis=0).ravel()
    lab = masks.ravel()
    sums = np.bincount(lab, weights=sq, minlength=n + 1)[1:]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def remove_bad_flow_masks(masks, dP, threshold: float = 0.4) -> np.ndarray:
    """Masks whose :func:`flow_errors` exceed `threshold` set to 0 (a new array)."""
    return _drop_ids(check_labels(masks, "masks", ndim=(2, 3)),
                     1 + np.flatnonzero(flow_errors(masks, dP) > threshold))


def fill_holes_and_remove_small_masks(masks, min_size: int = 15) -> np.ndarray:
    """Fill each mask's holes, drop masks under `min_size` pixels (before filling), renumber 1..N."""
    masks = check_labels(masks, "masks", ndim=(2, 3))
    out = np.zeros_like(masks)
    j = 0
    for i, slc in enumerate(ndimage.find_objects(masks)):
        if slc is None:
            continue
        msk = masks[slc] == i + 1
        npix = int(msk.sum())
        if npix == 0 or (min_size > 0 and npix < min_size):
            continue
        msk = ndimage.binary_fill_holes(msk)
        j += 1
        out[slc][msk] = j
    return out


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
    p = follow_flows(dP * iscell / FLOW_SCALE, niter=config.niter, interp=config.interp,
                     mask=iscell if config.follow == "cellprob" else None)
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
