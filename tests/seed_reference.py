"""The original Cellpose algorithms, transcribed as the slow reference the fast kernels are tested against.

``masks_to_flows`` / ``_extend_centers`` / ``diameters`` are the heat-diffusion flows of Cellpose's first
release (Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation", Nature Methods
18:100-106, 2021; MouseLand/cellpose, ``cellpose/dynamics.py`` and ``cellpose/utils.py`` of 2020), in
the plain NumPy form of its CPU path (``mu_c`` dropped, unused here); ``steps2D`` / ``get_masks`` are
its Euler flow following and histogram-peak mask building, without debugging prints and with the
seed threshold a parameter.  Do not "fix" anything here: these are the specification.
"""
import numpy as np
import scipy.ndimage
from scipy.ndimage import maximum_filter1d


def _extend_centers(T, y, x, ymed, xmed, Lx, niter):
    for t in range(niter):
        T[ymed * Lx + xmed] += 1
        T[y * Lx + x] = 1 / 9. * (T[y * Lx + x] + T[(y - 1) * Lx + x] + T[(y + 1) * Lx + x] +
                                  T[y * Lx + x - 1] + T[y * Lx + x + 1] +
                                  T[(y - 1) * Lx + x - 1] + T[(y - 1) * Lx + x + 1] +
                                  T[(y + 1) * Lx + x - 1] + T[(y + 1) * Lx + x + 1])
    return T


def masks_to_flows(masks, normalize=True):
    """The seed's flows; with ``normalize=False`` (2-D only) the raw gradients before the unit scaling."""
    if masks.ndim > 2:
        Lz, Ly, Lx = masks.shape
        mu = np.zeros((3, Lz, Ly, Lx), np.float32)
        for z in range(Lz):
            mu0 = masks_to_flows(masks[z])[0]
            mu[[1, 2], z] += mu0
        for y in range(Ly):
            mu0 = masks_to_flows(masks[:, y])[0]
            mu[[0, 2], :, y] += mu0
        for x in range(Lx):
            mu0 = masks_to_flows(masks[:, :, x])[0]
            mu[[0, 1], :, :, x] += mu0
        return mu, None

    Ly, Lx = masks.shape
    mu = np.zeros((2, Ly, Lx), np.float64)
    slices = scipy.ndimage.find_objects(masks)
    for i, si in enumerate(slices):
        if si is not None:
            sr, sc = si
            ly, lx = sr.stop - sr.start + 1, sc.stop - sc.start + 1
            y, x = np.nonzero(masks[sr, sc] == (i + 1))
            y = y.astype(np.int32) + 1
            x = x.astype(np.int32) + 1
            ymed = np.median(y)
            xmed = np.median(x)
            imin = np.argmin((x - xmed) ** 2 + (y - ymed) ** 2)
            xmed = x[imin]
            ymed = y[imin]

            niter = 2 * np.int32(np.ptp(x) + np.ptp(y))
            T = np.zeros((ly + 2) * (lx + 2), np.float64)
            T = _extend_centers(T, y, x, ymed, xmed, np.int32(lx), niter)
            T[(y + 1) * lx + x + 1] = np.log(1. + T[(y + 1) * lx + x + 1])

            dy = T[(y + 1) * lx + x] - T[(y - 1) * lx + x]
            dx = T[y * lx + x + 1] - T[y * lx + x - 1]
            mu[:, sr.start + y - 1, sc.start + x - 1] = np.stack((dy, dx))

    if normalize:
        mu /= (1e-20 + (mu ** 2).sum(axis=0) ** 0.5)
    return mu, None


def steps2D(p, dP, inds, niter):
    shape = p.shape[1:]
    for t in range(niter):
        for j in range(inds.shape[0]):
            y = inds[j, 0]
            x = inds[j, 1]
            p0, p1 = int(p[0, y, x]), int(p[1, y, x])
            step = dP[:, p0, p1]
            for k in range(p.shape[0]):
                p[k, y, x] = np.float32(min(shape[k] - 1, max(0, p[k, y, x] + step[k])))
    return p


def follow_flows(dP, niter=200):
    shape = np.array(dP.shape[1:]).astype(np.int32)
    p = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
    p = np.array(p).astype(np.float32)
    inds = np.array(np.nonzero(np.abs(dP[0]) > 1e-3)).astype(np.int32).T
    return steps2D(p, dP.astype(np.float32), inds, niter)


def get_masks(p, iscell=None, rpad=20, seed_threshold=10):
    pflows = []
    edges = []
    shape0 = p.shape[1:]
    dims = len(p)
    p = p.copy()
    if iscell is not None:
        inds = np.meshgrid(np.arange(shape0[0]), np.arange(shape0[1]), indexing='ij')
        for i in range(dims):
            p[i, ~iscell] = inds[i][~iscell]
    for i in range(dims):
        pflows.append(p[i].flatten().astype('int32'))
        edges.append(np.arange(-.5 - rpad, shape0[i] + .5 + rpad, 1))
    h, _ = np.histogramdd(tuple(pflows), bins=edges)
    hmax = h.copy()
    for i in range(dims):
        hmax = maximum_filter1d(hmax, 5, axis=i)
    seeds = np.nonzero(np.logical_and(h - hmax > -1e-6, h > seed_threshold))
    pix = list(np.array(seeds).T)
    expand = np.nonzero(np.ones((3, 3)))
    for iter in range(5):
        for k in range(len(pix)):
            if iter == 0:
                pix[k] = list(pix[k])
            newpix = []
            for i, e in enumerate(expand):
                epix = e[:, np.newaxis] + np.expand_dims(pix[k][i], 0) - 1
                epix = epix.flatten()
                newpix.append(epix)
            newpix = tuple(newpix)
            igood = h[newpix] > 2
            for i in range(dims):
                pix[k][i] = newpix[i][igood]
            if iter == 4:
                pix[k] = tuple(pix[k])
    M = np.zeros(h.shape, np.int32)
    for k in range(len(pix)):
        M[pix[k]] = 1 + k
    for i in range(dims):
        pflows[i] = pflows[i] + rpad
    M0 = M[tuple(pflows)]
    _, M0 = np.unique(M0, return_inverse=True)
    M0 = np.reshape(M0, shape0)
    return M0
