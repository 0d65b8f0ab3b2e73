"""Reading and writing images and instance labels.

Labels are never read through an 8-bit path (OpenCV's default reader truncates them to 8 bits):
TIFFs are read with tifffile, other formats with imageio, and both keep the file's integer type.
Colour-coded annotations are turned into ids by unique colour (not by a lightness channel, which
merges touching objects of equal lightness), then split into connected components.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .validation import relabel_sequential

__all__ = ["read_image", "read_volume", "anisotropy_of", "read_labels", "write_labels", "write_volume_labels", "write_image", "binary_to_labels", "read_ahead",
           "colors_to_labels", "relabel_sequential", "atomic_write", "hash_file", "ImageReadError"]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
_UMASK = os.umask(0)
os.umask(_UMASK)
#: A 3-D image whose first axis is at most this long, and whose last is longer, is channels-first.
MAX_CHANNELS_FIRST = 8


class ImageReadError(ValueError):
    """A file could not be read as an image or label image; the message names the file."""


def _read_array(path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile
            arr = tifffile.imread(path)
        else:
            import imageio.v3 as iio
            arr = iio.imread(path)
    except Exception as exc:  # any reader failure becomes one clear error naming the file
        raise ImageReadError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ImageReadError(f"{path}: the image has no pixels (shape {arr.shape})")
    return arr


def _drop_opaque_alpha(arr: np.ndarray) -> np.ndarray:
    """RGBA with a constant alpha channel (as DSB's PNGs) carries no information in the alpha."""
    if arr.ndim == 3 and arr.shape[-1] == 4 and np.all(arr[..., 3] == arr[..., 3].flat[0]):
        return arr[..., :3]
    return arr


def read_image(path) -> np.ndarray:
    """Read an image as float32 ``(H, W, C)``.

    TIFF and PNG (or anything imageio reads), 8- or 16-bit (or float), grayscale, RGB or
    multi-channel.  A constant alpha channel is dropped; an image stored channels-first
    ``(C, H, W)`` with at most 8 channels (and more than 8 columns) is moved to channels-last.  Intensities are not rescaled.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ImageReadError
        If it is empty, unreadable, not 2-D/3-D, or has NaN or inf values.
    """
    arr = channels_last(_drop_opaque_alpha(_read_array(path)))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageReadError(f"{path}: image has shape {arr.shape}; expected (H, W) or (H, W, C)")
    return _finite_float32(arr, path, "image")


def _finite_float32(arr, path, what: str) -> np.ndarray:
    """`arr` as float32, or an error naming the file if it is not numeric or holds NaN or inf."""
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ImageReadError(f"{path}: {what} has unsupported dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ImageReadError(f"{path}: {what} has {np.count_nonzero(~np.isfinite(arr))} NaN or inf values")
    return arr


def channels_last(arr: np.ndarray) -> np.ndarray:
    """A 2-D image with its channel axis last: ``(C, H, W)`` with at most ``MAX_CHANNELS_FIRST``
    channels (and more than that many columns), as ImageJ and napari keep stains, is moved to
    ``(H, W, C)``; anything else is returned as it is."""
    if arr.ndim == 3 and arr.shape[0] <= MAX_CHANNELS_FIRST < arr.shape[-1]:
        return np.moveaxis(arr, 0, -1)
    return arr


def colors_to_labels(rgb: np.ndarray) -> np.ndarray:
    """Colour-coded annotation ``(H, W, 3)`` (black background) to instance labels.

    Each unique colour is one id; each id's connected components (8-connectivity) become
    separate objects, so one colour reused for two distant objects still gives two objects.
    """
    from skimage.measure import label as cc_label

    flat = rgb.reshape(-1, rgb.shape[-1])
    _, ids = np.unique(flat, axis=0, return_inverse=True)
    ids = ids.reshape(rgb.shape[:-1])
    background = np.all(rgb == 0, axis=-1)
    ids = np.where(background, 0, ids + 1)
    return cc_label(ids, background=0, connectivity=2).astype(np.int32)


def binary_to_labels(mask, source: str = "`mask`") -> np.ndarray:
    """A binary mask to instance labels by connected components (8-connectivity), with a warning.

    Touching objects in a binary mask are indistinguishable and become one object.
    """
    from skimage.measure import label as cc_label

    labels = cc_label(np.asarray(mask) > 0, connectivity=2).astype(np.int32)
    warnings.warn(f"{source} is a binary mask: objects were separated by connected components, so "
                  f"touching objects are merged ({labels.max()} objects found). Provide instance "
                  "labels (one id per object) for correct targets.", UserWarning, stacklevel=2)
    return labels


def read_labels(path, ndim: int = 2) -> np.ndarray:
    """Read instance labels as int32, relabelled to 1..N.

    Accepts integer label images (up to uint32/int64 ids), colour-coded annotations (RGB or
    RGBA, black background; ids by unique colour, then connected components) and binary masks
    (connected components, with a warning: touching objects cannot be separated).

    Parameters
    ----------
    path : str or Path
    ndim : {2, 3}
        2 for ``(H, W)`` label images, 3 for ``(Z, Y, X)`` volumes.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ImageReadError
        If the file is empty or unreadable, not integer-valued, or has an ambiguous shape such as
        ``(1, H, W)``.
    """
    arr = _read_array(path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and ndim == 2:
        arr = _drop_opaque_alpha(arr)
        if arr.shape[-1] == 4:
            raise ImageReadError(f"{path}: RGBA label image with a varying alpha channel; "
                                 "save the annotation as RGB or as integer ids")
        if np.issubdtype(arr.dtype, np.floating):
            raise ImageReadError(f"{path}: colour-coded labels must be integer-typed, got {arr.dtype}")
        if np.all(arr == arr[..., :1]):  # grey stored as RGB: the grey values are the ids
            arr = arr[..., 0]
        else:
            return relabel_sequential(colors_to_labels(arr))
    if arr.ndim != ndim or 1 in arr.shape:
        what = "(H, W)" if ndim == 2 else "(Z, Y, X)"
        raise ImageReadError(
            f"{path}: label image has shape {arr.shape}, expected {what}"
            + (" (a singleton axis is ambiguous: squeeze it and save again)" if 1 in arr.shape else ""))
    if arr.dtype == bool:
        return binary_to_labels(arr, source=str(path))
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) \
                or np.any(arr != np.round(arr)):
            raise ImageReadError(f"{path}: label image is not integer-valued (dtype {arr.dtype})")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ImageReadError(f"{path}: label image has negative ids (minimum {arr.min()})")
    values = np.unique(arr)
    nonzero = values[values != 0]
    if nonzero.size == 1 and values.size == 2:
        # one value besides 0: a binary mask, unless it is one single object anyway
        from skimage.measure import label as cc_label
        if cc_label(arr > 0, connectivity=2).max() > 1:
            return binary_to_labels(arr, source=str(path))
    return relabel_sequential(arr)


def hash_file(path, h=None):
    """Feed a file's bytes to a hash object (default: a new SHA-256), in 1 MiB chunks; return it."""
    import hashlib

    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def read_ahead(load, items, depth: int = 2):
    """``(item, load(item))`` for each item, in order, loaded by a background thread up to `depth`
    items ahead, so that reading and preparing the next images overlaps the network's work on the
    current one.  An ``OSError`` or ``ValueError`` from `load` is yielded in place of its result
    (one bad file need not stop the others); any other exception is raised here.
    """
    import queue
    import threading

    q = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:  # False once the consumer has stopped
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                try:
                    result = load(item)
                except (OSError, ValueError) as exc:
                    result = exc
                if not put((item, result)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((done, exc))
            return
        put((done, None))

    thread = threading.Thread(target=work, name="unetflow-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, result = q.get()
            if item is done:
                if result is not None:
                    raise result
                return
            yield item, result
    finally:
        stop.set()  # the consumer stopped early: let the thread finish
        thread.join()


def atomic_write(path, write_fn) -> Path:
    """Write a file under a temporary name in its folder, then rename it into place.

    ``write_fn(tmp_path)`` writes the content.  A crash leaves either the old file or none, never
    a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_labels(path, labels) -> Path:
    """Write labels as a compressed TIFF (uint16 when the ids fit, else uint32), atomically."""
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) < 2 ** 16 else np.uint32
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib"))


def write_image(path, image) -> Path:
    """Write an array as a compressed TIFF, atomically, keeping its dtype."""
    import tifffile

    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, np.asarray(image), compression="zlib"))


def voxel_size(path):
    """The voxel size ``(z, y, x)`` (in the file's unit) of a TIFF stack, from ImageJ's metadata (the
    z ``spacing``) and the x / y resolution tags, as Fiji writes them; None when the file does not say."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            z = (tif.imagej_metadata or {}).get("spacing")
            tags = tif.pages[0].tags
            res = [tags[k].value for k in ("YResolution", "XResolution") if k in tags]
    except Exception:  # not a TIFF, or no such metadata: the caller gives the anisotropy
        return None
    if not z or len(res) != 2 or any(num == 0 or den == 0 for num, den in res):
        return None
    y, x = (den / num for num, den in res)  # the tags hold pixels per unit
    return (float(z), float(y), float(x))


def anisotropy_of(voxel_size):
    """z voxel size over the y voxel size of a ``(z, y, x)`` voxel size, None when it is unknown."""
    return voxel_size[0] / voxel_size[1] if voxel_size else None


def read_volume(path):
    """Read a 3-D stack as float32 ``(Z, Y, X)`` (or ``(Z, Y, X, C)``), with its voxel size.

    Returns
    -------
    volume : float32 array
    voxel_size : (z, y, x) tuple or None
        From the file's metadata (:func:`voxel_size`), None when it does not say.

    Raises
    ------
    FileNotFoundError, ImageReadError
        If the file is missing or unreadable, or the array is not 3-D (or 4-D with channels last).
    """
    arr = _read_array(path)
    if arr.ndim == 4 and arr.shape[1] <= 8 < arr.shape[-1]:  # (Z, C, Y, X), as ImageJ stores channels
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] > 8):
        raise ImageReadError(f"{path}: a volume must be (Z, Y, X) or (Z, Y, X, C); this file holds shape {arr.shape}")
    arr = _finite_float32(arr, path, "volume")
    return arr, voxel_size(path) if Path(path).suffix.lower() in TIFF_SUFFIXES else None


def write_volume_labels(path, labels, voxel_size=None) -> Path:
    """Write ``(Z, Y, X)`` labels as an ImageJ TIFF stack keeping the voxel size ``(z, y, x)`` (um), atomically."""
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) < 2 ** 16 else np.uint32
    kw = {}
    if voxel_size is not None:
        z, y, x = voxel_size
        kw = dict(resolution=(1 / y, 1 / x), metadata={"spacing": z, "unit": "um", "axes": "ZYX"})
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, labels.astype(dtype), imagej=dtype == np.uint16,
                                                           **kw))
