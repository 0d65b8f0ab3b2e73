"""Training crops and augmentation in NumPy, with flow vectors transformed with the image.

Every geometric transform here is an affine map between the output crop and the source image.
Images (and smooth scalar targets) are resampled bilinearly; flows, cellprob, boundary classes and
labels by nearest neighbour (no mixing of two objects' vectors or ids); and the flow *vectors* are mapped by the same linear
part, renormalised to unit length.  A horizontal flip negates dx, a vertical one dy, and rot90
swaps and negates components: a Keras port that rotates images but not vectors, which
teaches the network flows that point the wrong way.

No TensorFlow here: :mod:`unetflow.pipeline` wraps :func:`sample_crop` in tf.data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["AugmentConfig", "sample_crop", "apply_transform", "random_transform", "Transform", "base_zoom",
           "augment_appearance"]


@dataclass(frozen=True)
class AugmentConfig:
    """Crop and augmentation options of the training pipeline.

    Attributes
    ----------
    crop_size : int
        Side of the square training crops (images smaller than it are padded).
    flips : bool
        Random horizontal and vertical flips.
    rot90 : bool
        Random multiples of 90 degrees.
    rotate : bool
        Random rotation by any angle (flows rotated with the image).
    scale_range : (float, float)
        Random isotropic zoom factor range (log-uniform); (1, 1) disables scaling.
    target_diameter : float or None
        Zoom each training image so that its median object diameter becomes this many pixels
        (Cellpose trains nuclei at 17 px), then apply `scale_range` around it.  Prediction then
        zooms images to this size too (``diameter="auto"`` estimates their object size).  None
        trains at native scale.
    intensity_jitter : float
        Image multiplied by ``1 + U(-j, j)`` (BBBC: 0.75); 0 disables it.
    noise_std : float
        Gaussian noise added to the normalised image, with a standard deviation drawn from
        ``U(0, noise_std)`` per crop; 0 disables it.
    gamma_range : (float, float)
        Random gamma (log-uniform) applied to the normalised image's magnitude; (1, 1) disables it.
    blur_sigma : float
        Gaussian blur with a sigma drawn from ``U(0, blur_sigma)`` pixels per crop; 0 disables it.
    object_crop_tries : int
        Draw up to this many crop positions and keep the first with objects covering at least
        ``min_object_fraction`` of the crop (0: any position).
    min_object_fraction : float
    """

    crop_size: int = 256
    flips: bool = True
    rot90: bool = True
    rotate: bool = False
    scale_range: tuple = (1.0, 1.0)
    target_diameter: float | None = None
    intensity_jitter: float = 0.0
    noise_std: float = 0.0
    gamma_range: tuple = (1.0, 1.0)
    blur_sigma: float = 0.0
    object_crop_tries: int = 4
    min_object_fraction: float = 0.05

    def __post_init__(self):
        if self.crop_size < 8:
            raise ValueError(f"`crop_size` must be at least 8, got {self.crop_size}")
        for name in ("scale_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"`{name}` must satisfy 0 < lo <= hi, got {getattr(self, name)}")
        if self.target_diameter is not None and not self.target_diameter > 0:
            raise ValueError(f"`target_diameter` must be a positive number of pixels or None, got {self.target_diameter}")
        for name in ("noise_std", "blur_sigma", "intensity_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Transform:
    """Output pixel ``q`` (crop coordinates) samples the source at ``A @ (q - c_out) + c_src``.

    ``A`` is 2x2 (rows/cols = y/x).  A flow vector ``v`` of the source becomes ``inv(A) @ v`` in
    the output (renormalised).
    """

    A: np.ndarray
    c_src: np.ndarray
    out_shape: tuple

    @property
    def exact(self) -> bool:
        """An integer (flip / rot90) map with an integer-aligned centre: slicing reproduces it."""
        return bool(np.all(np.isin(self.A, (-1, 0, 1))) and abs(np.linalg.det(self.A)) == 1)


def _rotation(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def random_transform(rng: np.random.Generator, src_shape, config: AugmentConfig, weight=None,
                     zoom: float = 1.0) -> Transform:
    """Draw a crop position and geometric augmentation.

    ``weight`` (an (H, W) bool array, e.g. the cell mask) lets the crop prefer object pixels;
    ``zoom`` is a base zoom factor (objects grow by it) applied before the random scale.
    """
    size = config.crop_size
    A = np.eye(2)
    if config.flips:
        A = A @ np.diag([rng.choice([-1, 1]), rng.choice([-1, 1])])
    if config.rot90:
        A = A @ np.round(_rotation(np.pi / 2 * rng.integers(4)))
    if config.rotate:
        A = A @ _rotation(rng.uniform(0, 2 * np.pi))
    lo, hi = config.scale_range
    if hi > lo or lo != 1.0:
        zoom = zoom * np.exp(rng.uniform(np.log(lo), np.log(hi)))
    if zoom != 1.0:
        A = A / zoom  # zoom s: the source is sampled 1/s apart
    # half-extent of the crop's footprint in the source, so the centre keeps the crop inside if it can
    half = np.abs(A) @ np.array([(size - 1) / 2, (size - 1) / 2])
    H, W = src_shape
    c_lo = np.minimum(half, np.array([H - 1, W - 1]) / 2)       # centre range that keeps the crop
    c_hi = np.maximum(np.array([H - 1, W - 1]) - half, c_lo)    # inside (or centred, if it cannot)
    centre = rng.uniform(c_lo, c_hi)
    if weight is not None and config.object_crop_tries > 0 and weight.any():
        fg = None
        for _ in range(config.object_crop_tries):
            y0, x0 = np.floor(centre - half).astype(int).clip(0)
            y1, x1 = np.floor(centre + half).astype(int) + 1
            window = weight[y0:y1, x0:x1]
            if window.size and window.mean() >= config.min_object_fraction:
                break
            # next candidate: centred near a random object pixel
            fg = np.argwhere(weight) if fg is None else fg
            anchor = fg[rng.integers(len(fg))] + rng.uniform(-size / 4, size / 4, 2)
            centre = np.clip(anchor, c_lo, c_hi)
    if np.all(np.isin(A, (-1, 0, 1))):
        # keep the pixel grid: an exact crop needs the footprint's corner on an integer pixel
        centre = np.floor(centre - (size - 1) / 2) + (size - 1) / 2
    return Transform(A=A, c_src=centre, out_shape=(size, size))


def _sample(arr, t: Transform, order: int, cval):
    """Resample (H, W) or (H, W, C) ``arr`` through transform ``t``."""
    size_y, size_x = t.out_shape
    if t.exact:
        return _sample_exact(arr, t, cval)
    q = np.mgrid[:size_y, :size_x].reshape(2, -1).astype(np.float64)
    c_out = np.array([(size_y - 1) / 2, (size_x - 1) / 2])
    src = t.A @ (q - c_out[:, None]) + t.c_src[:, None]
    chans = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack([ndimage.map_coordinates(chans[..., c], src, order=order, mode="constant", cval=cval,
                                            prefilter=False).reshape(size_y, size_x)
                    for c in range(chans.shape[-1])], -1)
    return out[..., 0] if arr.ndim == 2 else out


def _sample_exact(arr, t: Transform, cval):
    """Flip / rot90 crops by slicing: bit-exact, and fast."""
    size_y, size_x = t.out_shape
    c_out = np.array([(size_y - 1) / 2, (size_x - 1) / 2])
    corners = np.array([[0, 0], [0, size_x - 1], [size_y - 1, 0], [size_y - 1, size_x - 1]], float)
    src = (t.A @ (corners - c_out).T).T + t.c_src
    y0, x0 = np.rint(src.min(0)).astype(int)
    y1, x1 = np.rint(src.max(0)).astype(int) + 1
    H, W = arr.shape[:2]
    pad = ((max(0, -y0), max(0, y1 - H)), (max(0, -x0), max(0, x1 - W))) + ((0, 0),) * (arr.ndim - 2)
    if any(p for pp in pad for p in pp):
        arr = np.pad(arr, pad, constant_values=cval)
        y0, y1, x0, x1 = y0 + pad[0][0], y1 + pad[0][0], x0 + pad[1][0], x1 + pad[1][0]
    win = arr[y0:y1, x0:x1]
    # output axes: q = inv(A) (src - c); with A a signed permutation, undo it axis by axis
    inv = np.round(np.linalg.inv(t.A)).astype(int)
    if inv[0, 0] == 0:  # axes swapped
        win = np.swapaxes(win, 0, 1)
        inv = inv[:, ::-1]
    if inv[0, 0] < 0:
        win = win[::-1]
    if inv[1, 1] < 0:
        win = win[:, ::-1]
    return np.ascontiguousarray(win)


def _transform_vectors(flows, A):
    """Map channels-last (dy, dx) vectors by ``inv(A)`` and renormalise non-zero ones to unit length."""
    M = np.linalg.inv(A)
    v = flows @ M.T
    norm = np.sqrt((v ** 2).sum(-1, keepdims=True))
    nonzero = norm > 1e-12
    return np.where(nonzero, v / np.where(nonzero, norm, 1.0), 0.0).astype(np.float32)


def apply_transform(arrays: dict, t: Transform) -> dict:
    """Resample a dict of arrays through one transform, each as its kind says
    (:func:`unetflow.tasks.array_kinds`: the image, labels and every task's targets).

    ``flows`` must be channels-last ``(H, W, 2)`` unit vectors; they are resampled by nearest
    neighbour and their vectors mapped (a flip negates a component, rot90 swaps them).
    """
    from .tasks import array_kinds

    kinds, out = array_kinds(), {}
    for key, arr in arrays.items():
        if key not in kinds:
            raise ValueError(f"no resampling kind for array {key!r}; known: {sorted(kinds)}")
        kind = kinds[key]
        if kind == "linear":
            out[key] = _sample(arr, t, order=1, cval=0.0).astype(np.float32)
        elif kind == "vector":
            out[key] = _transform_vectors(_sample(arr, t, order=0, cval=0.0), t.A)
        else:
            out[key] = _sample(arr, t, order=0, cval=0).astype(arr.dtype)
    return out


def base_zoom(diameter: float, config: AugmentConfig) -> float:
    """The zoom that brings objects of median `diameter` to ``config.target_diameter`` (1 without one)."""
    if config.target_diameter is None or not diameter > 0:
        return 1.0
    return float(config.target_diameter) / float(diameter)


def augment_appearance(rng: np.random.Generator, image: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Blur, gamma, brightness jitter and noise of a normalised ``(H, W, C)`` (or ``(Z, Y, X, C)``)
    crop (in that order)."""
    img = image.astype(np.float32)
    if config.blur_sigma:
        sigma = rng.uniform(0, config.blur_sigma)
        img = ndimage.gaussian_filter(img, (sigma,) * (img.ndim - 1) + (0,))
    lo, hi = config.gamma_range
    if hi > lo or lo != 1.0:
        # on the magnitude, keeping the sign: normalised images dip slightly below 0
        img = np.sign(img) * np.abs(img) ** np.exp(rng.uniform(np.log(lo), np.log(hi)))
    if config.intensity_jitter:
        img = img * (1 + rng.uniform(-config.intensity_jitter, config.intensity_jitter))
    if config.noise_std:
        img = img + rng.normal(0, rng.uniform(0, config.noise_std), img.shape)
    return img.astype(np.float32)


def sample_crop(rng: np.random.Generator, arrays: dict, config: AugmentConfig, zoom: float = 1.0) -> dict:
    """One random augmented training crop of an image and its targets.

    Parameters
    ----------
    rng : numpy.random.Generator
    arrays : dict
        ``image`` (H, W, C) normalised float32, plus any of ``flows`` (H, W, 2), ``cellprob``,
        ``boundary``, ``labels`` (H, W).
    config : AugmentConfig
    zoom : float
        Base zoom of this image (see :func:`base_zoom`).
    """
    weight = arrays["cellprob"] > 0 if "cellprob" in arrays else None
    t = random_transform(rng, arrays["image"].shape[:2], config, weight, zoom)
    out = apply_transform(arrays, t)
    out["image"] = augment_appearance(rng, out["image"], config)
    return out
