"""Volumes ``(Z, Y, X)``: 3-D instances from a 2-D network in Cellpose's two ways, or from a 3-D network.

``mode="3d"`` (Cellpose's ``do_3D``; Stringer et al., Nature Methods 18:100-106, 2021): the volume is
resampled to isotropic voxels (z zoomed by the anisotropy) and to the object size the network
learnt; the 2-D flow network runs on every YX, ZY and ZX slice; each flow component is the average
of the two views that see it (dz from ZY and ZX, dy from YX and ZY, dx from YX and ZX) and cellprob
the average of all three; the flows are followed and the masks built in 3-D
(:func:`unetflow.dynamics.compute_masks`); the labels are resampled back to the stack's grid.

``mode="stitch"`` (Cellpose's ``stitch_threshold``): 2-D masks on every YX slice, joined across z: a
mask takes the id of the previous slice's mask it overlaps with IoU >= `stitch_threshold` (one to
one, best IoU first), else a new id.  An empty slice ends every object that reaches it.

A 3-D network (task ``flow3d``, :mod:`unetflow.tasks.flow3d`) sees the volume resampled to
isotropic voxels, in overlapping cubes of at most ``VOLUME_TILE`` voxels a side
(:func:`predict_volume_raw`), and outputs ``[dz, dy, dx, cellprob]``, followed in 3-D the same way.
It learns from cubes of annotated volumes (:func:`load_volume_crops_data`,
:func:`sample_volume_crop`).

The network's memory is bounded by its tiles (2-D) or cubes (3-D); the volume itself, resampled,
and its outputs are held in memory (up to about 60 bytes per resampled voxel, for the three views'
outputs: a 100 x 100 x 100 stack at anisotropy 2.2, 2.2 million voxels, takes about 130 MB), so
stacks of more than a few hundred voxels a side go block by block: :func:`unetflow.big.predict_big`
with ``volume=True`` (``unetflow predict RUN STACK.tif --3d --out LABELS.zarr``).
"""
from __future__ import annotations

import numpy as np

from .conventions import DEFAULT_TILE, VOLUME_TILE
from .sizing import resolve_size
from .tasks import get_task

__all__ = ["predict_volume", "predict_volume_raw", "combine_views", "stitch_slices", "volume_slices",
           "load_volume_training_data", "load_volume_crops_data", "sample_volume_crop", "VOLUME_MODES"]

VOLUME_MODES = ("3d", "stitch")


def combine_views(yx, zy, zx):
    """3-D flows and cellprob from the outputs of the three slice directions.

    Parameters
    ----------
    yx : (Z, Y, X, 3) array
        Outputs of the YX slices ``volume[z]``: ``[dy, dx, cellprob]``.
    zy : (X, Z, Y, 3) array
        Outputs of the ZY slices ``volume[:, :, x]``: ``[dz, dy, cellprob]``.
    zx : (Y, Z, X, 3) array
        Outputs of the ZX slices ``volume[:, y, :]``: ``[dz, dx, cellprob]``.

    Returns
    -------
    dP : (3, Z, Y, X) float32 array
        ``(dz, dy, dx)``, each the mean of the two views that see that component.
    cellprob : (Z, Y, X) float32 array
        The mean of the three views' logits.
    """
    zy = np.moveaxis(np.asarray(zy, np.float32), 0, 2)
    zx = np.moveaxis(np.asarray(zx, np.float32), 0, 1)
    yx = np.asarray(yx, np.float32)
    dP = np.stack([(zy[..., 0] + zx[..., 0]) / 2, (yx[..., 0] + zy[..., 1]) / 2, (yx[..., 1] + zx[..., 1]) / 2])
    return dP, (yx[..., 2] + zy[..., 2] + zx[..., 2]) / 3


def stitch_slices(masks, stitch_threshold: float = 0.25) -> np.ndarray:
    """Join 2-D masks ``(Z, Y, X)`` (ids per slice) into 3-D objects across z.

    A mask continues the object of the previous slice's mask it overlaps with IoU >=
    `stitch_threshold`, pairs taken best IoU first, each at most once; any other mask starts a new
    object.  Empty slices are allowed: they end the objects that reach them.
    """
    masks = np.asarray(masks)
    out = np.zeros(masks.shape, np.int32)
    next_id = 1
    prev = None  # the previous slice's labels, in output ids
    for z in range(masks.shape[0]):
        ids = np.unique(masks[z])
        ids = ids[ids > 0]
        lut = np.zeros(int(masks[z].max(initial=0)) + 1, np.int32)
        if ids.size and prev is not None and prev.any():
            a, b, iou = _pair_iou(prev, masks[z])
            used_prev, used_cur = set(), set()
            for k in np.argsort(-iou, kind="stable"):
                if iou[k] < stitch_threshold:
                    break
                if a[k] not in used_prev and b[k] not in used_cur:
                    lut[b[k]] = a[k]
                    used_prev.add(a[k])
                    used_cur.add(b[k])
        for b in ids:
            if lut[b] == 0:
                lut[b] = next_id
                next_id += 1
        out[z] = lut[masks[z]]
        prev = out[z]
    return out


#: At most this many times the stack's voxels after resampling (a wrong size estimate must not fill
#: the memory).
MAX_UPSAMPLING = 64.0


def _sample_slices(volume, n: int = 5):
    """`n` YX slices spread over the middle of the stack (its faces often cut objects or hold none)."""
    Z = volume.shape[0]
    return [volume[z] for z in np.unique(np.linspace(Z // 4, Z - 1 - Z // 4, n).round().astype(int))]


def _estimate_on_slices(run, slices, pp):
    """The median of :func:`unetflow.sizing.estimate_diameter` over several slices (one slice of a
    noisy stack can fool it), within the size search's range; ``"native"`` when nothing is found."""
    from .sizing import SIZE_CANDIDATES, estimate_diameter

    found = [d for x in slices if (d := estimate_diameter(run.model, x, task=run.task, train_diameter=run.train_diameter,
                                                          postprocess=pp)) > 0]
    if not found:
        return "native"
    return float(np.clip(np.median(found), min(SIZE_CANDIDATES), max(SIZE_CANDIDATES)))


def _pair_iou(a, b):
    """Every overlapping pair of ids of two label slices (ids as they are) and its IoU."""
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    return pairs[0], pairs[1], inter / (area_a[pairs[0]] + area_b[pairs[1]] - inter)


def _zoom(volume, factors, order):
    from scipy import ndimage

    if np.allclose(factors, 1.0):
        return volume
    factors = tuple(factors) + (1.0,) * (volume.ndim - len(factors))
    return ndimage.zoom(volume, factors, order=order, prefilter=False, grid_mode=True, mode="nearest")


def _resize_labels(labels, shape):
    """Nearest-neighbour resampling of labels to `shape` (ids kept, no new values)."""
    idx = [np.minimum((np.arange(n) + 0.5) * (m / n), m - 1).astype(int) for n, m in zip(shape, labels.shape)]
    return labels[np.ix_(*idx)]


def predict_volume_raw(model, volume, input_multiple: int, tile: int = VOLUME_TILE) -> np.ndarray:
    """Outputs ``(Z, Y, X, channels)`` of a 3-D network on a prepared volume ``(Z, Y, X, C)``.

    The volume is padded (reflected) to multiples of `input_multiple` and cut into the fewest cubes
    of at most `tile` voxels a side that overlap by the network's receptive radius
    (:func:`unetflow.tiling.tile_layout`, as 2-D tiles are); their outputs are blended with weights
    tapering over the overlap, so memory is bounded by the cube, and a volume that fits is one cube.
    """
    from .geometry import receptive_radius
    from .tiling import forward, taper, tile_layout

    shape = volume.shape[:3]
    pad = [(0, -n % input_multiple) for n in shape] + [(0, 0)]
    padded = np.pad(np.asarray(volume, np.float32), pad, mode="reflect" if min(shape) > 1 else "edge")
    tile = max(4 * input_multiple, tile // input_multiple * input_multiple)
    margin = min(tile // 2, receptive_radius(input_multiple))
    (zs, tz), (ys, ty), (xs, tx) = (tile_layout(n, tile, margin, input_multiple) for n in padded.shape[:3])
    network = forward(model)
    if len(zs) == len(ys) == len(xs) == 1:
        return np.asarray(network(padded[None]), np.float32)[0, :shape[0], :shape[1], :shape[2]]
    ramps = [taper(t, margin) if len(starts) > 1 else np.ones(t, np.float32)
             for starts, t in ((zs, tz), (ys, ty), (xs, tx))]
    weight = (ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :])[..., None]
    out = norm = None
    for z in zs:
        for y in ys:
            for x in xs:
                cube = (slice(z, z + tz), slice(y, y + ty), slice(x, x + tx))
                pred = np.asarray(network(padded[cube][None]), np.float32)[0]
                if out is None:
                    out = np.zeros(padded.shape[:3] + pred.shape[-1:], np.float32)
                    norm = np.zeros(padded.shape[:3] + (1,), np.float32)
                out[cube] += pred * weight
                norm[cube] += weight
    return (out / norm)[:shape[0], :shape[1], :shape[2]]


def check_anisotropy(anisotropy) -> float:
    """`anisotropy` (None: isotropic) as a float, or a ValueError naming it."""
    aniso = 1.0 if anisotropy is None else float(anisotropy)
    if not np.isfinite(aniso) or aniso <= 0:
        raise ValueError(f"`anisotropy` must be a positive number (z voxel size / y-x voxel size), got {anisotropy!r}")
    return aniso


def check_volume_run(task: str, mode: str, diameter, where) -> bool:
    """Whether a run of `task` (named `where` in the errors) is a 3-D network, or a ValueError when
    it cannot segment a volume in `mode` at `diameter`."""
    if mode not in VOLUME_MODES:
        raise ValueError(f"`mode` must be one of {VOLUME_MODES}, got {mode!r}")
    native = get_task(task).spatial_dims == 3
    if mode == "3d" and task not in ("flow", "flow3d"):
        raise ValueError(f"mode '3d' follows flows in 3-D and needs a flow run; {where} is a {task} run "
                         "(use mode 'stitch')")
    if native and mode != "3d":
        raise ValueError(f"{where} is a 3-D network: it segments volumes in mode '3d' only")
    if native and diameter == "auto":
        raise ValueError("`diameter` 'auto' searches sizes with a 2-D network; a 3-D run takes the stack at "
                         "its own scale ('native', its default) or a diameter in y / x pixels")
    return native


def predict_volume(run, volume, *, anisotropy: float | None = None, diameter=None, mode: str = "3d",
                   stitch_threshold: float = 0.25, tile_size=None, batch_size: int = 8, input_stats=None,
                   **postprocess):
    """Segment a volume with a 2-D run (either mode) or a 3-D one (``"3d"``).

    Parameters
    ----------
    run : Run, path to a run directory, or a ready model's name
    volume : (Z, Y, X) or (Z, Y, X, C) array
        The raw stack (:func:`unetflow.io.read_volume`).
    anisotropy : float, optional
        z voxel size over the y / x voxel size (2.2 for 0.28 um slices of 0.127 um pixels).  None
        or 1: isotropic voxels.
    diameter : float, "auto" or "native", optional
        Median object diameter in y / x pixels, as for :func:`unetflow.predict.predict_instances`
        (``"auto"``: the median estimate over five YX slices of the middle of the stack).  None: the
        run's own choice.
    mode : {"3d", "stitch"}
        See the module's documentation.  ``"3d"`` needs a flow run (2-D or 3-D); a 3-D run has no other mode.
    stitch_threshold : float
        IoU that joins masks of consecutive slices (``"stitch"``).
    tile_size : int, optional
        Largest side of the tiles a 2-D network runs on (default ``DEFAULT_TILE``), or of the cubes
        of a 3-D one (default ``VOLUME_TILE``): what bounds the network's memory.
    batch_size : int
        Tiles per network call (2-D networks).
    input_stats : unetflow.preprocess.InputStats, optional
        Normalisation statistics to use instead of the stack's own (a block of a larger stack takes
        the whole stack's, :func:`unetflow.big.predict_big`).
    **postprocess
        Overrides of the run's post-processing options.

    Returns
    -------
    labels : (Z, Y, X) int32 array
        On the stack's own grid.
    info : dict
        ``diameter`` (the y / x diameter used, if any), ``anisotropy`` and ``postprocess`` (the
        options the masks were made with).
    """
    from .predict import Run, load_run, predict_raw_many, raw_to_labels
    from .preprocess import prepare_image
    from .preprocess import input_stats as measure_stats

    run = run if isinstance(run, Run) else load_run(run)
    volume = np.asarray(volume, np.float32)
    if volume.ndim not in (3, 4):
        raise ValueError(f"`volume` must be (Z, Y, X) or (Z, Y, X, C), got shape {volume.shape}")
    aniso = check_anisotropy(anisotropy)
    native = check_volume_run(run.task, mode, diameter, run.path)
    cube = tile_size or VOLUME_TILE  # a 3-D network's cubes, a 2-D one's tiles
    tile_size = tile_size or DEFAULT_TILE
    diameter = run.sizing(diameter)
    pp = run.postprocess_config(**postprocess)
    # one normalisation for the whole stack: every slice of every view sees the same intensities
    stats = input_stats or measure_stats(volume.reshape(-1, *volume.shape[2:]), run.config.input)

    def prepared(img):
        x = prepare_image(img, run.config.input, stats)
        return x[..., None] if x.ndim == 2 else x

    if diameter == "auto":
        diameter = _estimate_on_slices(run, [prepared(s) for s in _sample_slices(volume)], pp)
    sized = resolve_size(run.model, None, diameter, task=run.task, train_diameter=run.train_diameter, postprocess=pp)
    d, f = sized.diameter, sized.factor
    info = {"diameter": d, "anisotropy": aniso}
    if f * f * f * aniso > MAX_UPSAMPLING:
        raise ValueError(f"objects of {d:.1f} px would zoom the volume {f:.1f}x in y and x (and {f * aniso:.1f}x in z) to "
                         f"reach the run's training size of {run.train_diameter:g} px: give `diameter` (px) if the "
                         "objects really are that small")

    def outputs(slices):
        items = ((prepared(s), 1.0) for s in slices)
        return np.stack(list(predict_raw_many(run.model, items, task=run.task, tile_size=tile_size,
                                              batch_size=batch_size, input_multiple=run.input_multiple)))

    if mode == "stitch":
        v = _zoom(volume, (1.0, f, f), order=1)
        masks = np.stack([raw_to_labels(r, run.task, pp) for r in outputs(list(v))])
        info["postprocess"] = vars(pp)
        labels = stitch_slices(_resize_labels(masks, volume.shape[:3]), stitch_threshold)
        return labels, info
    v = _zoom(volume, (aniso * f, f, f), order=1)  # isotropic voxels at the training object size
    from .dynamics import FLOW_3D_OPTIONS, compute_masks

    pp = pp.with_overrides(**FLOW_3D_OPTIONS)
    info["postprocess"] = vars(pp)
    if native:
        raw = predict_volume_raw(run.model, np.stack([prepared(s) for s in v]), run.input_multiple, cube)
        return _resize_labels(get_task(run.task).to_labels(raw, pp), volume.shape[:3]), info
    yx = outputs(list(v))
    zy = outputs([v[:, :, x] for x in range(v.shape[2])])
    zx = outputs([v[:, y] for y in range(v.shape[1])])
    dP, cellprob = combine_views(yx, zy, zx)
    masks = compute_masks(dP, cellprob, pp)
    return _resize_labels(masks, volume.shape[:3]), info



def volume_slices(volume, labels, anisotropy: float = 1.0):
    """The 2-D training images of an annotated volume: its YX, ZY and ZX slices once resampled to
    isotropic voxels (z zoomed by `anisotropy`; image linear, labels nearest), those holding at least
    one object.  Yields ``(image slice, label slice)``."""
    v = _zoom(np.asarray(volume, np.float32), (anisotropy, 1.0, 1.0), order=1)
    lab = _zoom(np.asarray(labels), (anisotropy, 1.0, 1.0), order=0)
    for axis in range(3):
        for k in range(lab.shape[axis]):
            label_slice = np.take(lab, k, axis=axis)
            if label_slice.any():
                yield np.take(v, k, axis=axis), label_slice


def _read_annotated_volume(img, lab):
    """An annotated volume of a manifest: the stack, its ``(Z, Y, X)`` labels (checked to match) and its
    anisotropy from the file's voxel size (1, with a warning, when the file does not say)."""
    import logging

    from .io import anisotropy_of, read_labels, read_volume

    volume, voxel = read_volume(img)
    labels = read_labels(lab, ndim=3)
    if labels.shape != volume.shape[:3]:
        raise ValueError(f"{lab}: label volume shape {labels.shape} differs from image {img} shape {volume.shape[:3]}")
    if voxel is None:
        logging.getLogger(__name__).warning("%s: no voxel size in the file: its voxels are taken as isotropic", img)
    return volume, labels, anisotropy_of(voxel) or 1.0


def load_volume_training_data(images, label_paths, input_config, names=None, progress: bool = True):
    """:class:`unetflow.pipeline.TrainingData` of the slices of annotated volumes (:func:`volume_slices`).

    Each volume is normalised as a whole (every slice alike) and resampled by the anisotropy of its
    file's voxel size (:func:`unetflow.io.read_volume`; isotropic, with a warning, when the file does
    not say).  The targets of the slices are computed here, not cached: slices are not files.
    """
    from .pipeline import TrainingData, training_item
    from .precompute import compute_targets
    from .preprocess import input_stats, prepare_image
    from .progress import progress_bar
    from .tasks import array_kinds
    from .validation import relabel_sequential

    kinds, items, item_names = array_kinds(), [], []
    names = list(names) if names is not None else [str(p) for p in images]
    for img, lab, name in progress_bar(list(zip(images, label_paths, names)), desc="slice volumes", unit="volume",
                                       enabled=progress):
        volume, labels, aniso = _read_annotated_volume(img, lab)
        stats = input_stats(volume.reshape(-1, *volume.shape[2:]), input_config)
        for k, (image, label_slice) in enumerate(volume_slices(volume, labels, aniso)):
            targets = compute_targets(relabel_sequential(label_slice).astype(np.int32))
            items.append(training_item(prepare_image(image, input_config, stats), targets, kinds))
            item_names.append(f"{name}:{k}")
    return TrainingData(items, item_names)


def load_volume_crops_data(images, label_paths, input_config, names=None, progress: bool = True):
    """:class:`unetflow.pipeline.TrainingData` of whole annotated volumes, for a 3-D network (task ``flow3d``).

    Each volume is normalised as a whole and resampled to isotropic voxels (z zoomed by the
    anisotropy of its file's voxel size, as at prediction; isotropic, with a warning, when the file
    does not say); its 3-D flows are computed here from the resampled labels (a resampled volume is
    not a file the cache could key).  An item's ``diameter`` is the median y / x diameter of its
    objects (:func:`unetflow.flows.diameters` over the YX slices), the size prediction compares with.
    """
    from .flows import diameters
    from .pipeline import TrainingData, training_item
    from .preprocess import input_stats, prepare_image
    from .progress import progress_bar
    from .validation import relabel_sequential

    task, items = get_task("flow3d"), []
    names = list(names) if names is not None else [str(p) for p in images]
    for img, lab in progress_bar(list(zip(images, label_paths)), desc="load volumes", unit="volume",
                                 enabled=progress):
        volume, labels, aniso = _read_annotated_volume(img, lab)
        stats = input_stats(volume.reshape(-1, *volume.shape[2:]), input_config)
        image = _zoom(np.stack([prepare_image(s, input_config, stats) for s in volume]), (aniso, 1.0, 1.0), order=1)
        image = image[..., None] if image.ndim == 3 else image
        labels = relabel_sequential(_zoom(labels, (aniso, 1.0, 1.0), order=0)).astype(np.int32)
        item = training_item(image.astype(np.float32), {"labels": labels, **task.make_targets(labels, None)})
        item["diameter"] = diameters(np.concatenate(list(labels), axis=1))  # the YX sections, side by side
        items.append(item)
    return TrainingData(items, names)


def _zoom_crop(crop: dict, side: int) -> dict:
    """A volume crop's arrays resampled to `side` voxels a side, each as its kind says
    (:func:`unetflow.tasks.array_kinds`, as 2-D crops are): the image linearly, the others nearest, so
    flow vectors keep their length and, the zoom being the same along every axis, their direction."""
    from .tasks import array_kinds

    kinds = array_kinds()
    return {key: _zoom(a, [side / n for n in a.shape[:3]], order=1 if kinds[key] == "linear" else 0)
            for key, a in crop.items()}


def sample_volume_crop(rng, arrays: dict, config, augment: bool = True) -> dict:
    """One random training crop ``crop_size`` voxels a side of a volume item and its 3-D flows.

    The crop is placed on an object voxel where one is found in ``object_crop_tries`` draws (a
    volume is mostly background).  With `augment`: a zoom drawn log-uniformly from
    ``scale_range``, the same along z, y and x (the volume has isotropic voxels by then, so its
    anisotropy stays corrected; the image resampled linearly, the targets nearest), a flip of each
    axis (negating the flow component along it), a rotation by a multiple of 90 degrees in the YX
    plane (rotating ``(dy, dx)`` with it), and the 2-D pipeline's appearance changes
    (:func:`unetflow.augment.augment_appearance`).  No free rotation: it would mix z into y and x
    across the resampling.  Volumes smaller than the crop are padded (image reflected, targets zero).
    """
    from .augment import augment_appearance

    lo, hi = config.scale_range
    zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if augment and (lo, hi) != (1.0, 1.0) else 1.0
    size = max(2, int(round(config.crop_size / zoom)))  # the cube cut from the volume, zoomed to crop_size
    shape = arrays["image"].shape[:3]
    pad = [(0, max(0, size - n)) for n in shape]
    if any(p for _, p in pad):
        arrays = {k: np.pad(a, pad + [(0, 0)] * (a.ndim - 3), mode="reflect" if k == "image" else "constant")
                  for k, a in arrays.items()}
        shape = arrays["image"].shape[:3]
    inside = np.argwhere(arrays["cellprob"] > 0) if config.object_crop_tries else np.empty((0, 3))
    if len(inside):
        centre = inside[rng.integers(len(inside))]
        start = [int(np.clip(c - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, n - size))
                 for c, n in zip(centre, shape)]
    else:
        start = [int(rng.integers(0, n - size + 1)) for n in shape]
    window = tuple(slice(s, s + size) for s in start)
    crop = {k: np.array(a[window]) for k, a in arrays.items()}
    if size != config.crop_size:
        crop = _zoom_crop(crop, config.crop_size)
    if not augment:
        return crop
    flows = crop["flows"]
    for axis in range(3):
        if config.flips and rng.random() < 0.5:
            crop = {k: np.flip(a, axis) for k, a in crop.items()}
            flows = crop["flows"]
            flows[..., axis] *= -1  # a flipped axis reverses the flow component along it
    k = int(rng.integers(4)) if config.rot90 else 0
    if k:
        crop = {key: np.rot90(a, k, axes=(1, 2)) for key, a in crop.items()}
        flows = crop["flows"]
        dy, dx = flows[..., 1].copy(), flows[..., 2].copy()
        for _ in range(k):  # np.rot90 moves (y, x) to (W - 1 - x, y): a vector (dy, dx) becomes (-dx, dy)
            dy, dx = -dx, dy
        flows[..., 1], flows[..., 2] = dy, dx
    crop = {key: np.ascontiguousarray(a) for key, a in crop.items()}
    crop["image"] = augment_appearance(rng, crop["image"], config)
    return crop
