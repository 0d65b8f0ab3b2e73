"""Block-wise prediction of images and volumes too large for memory, on ``dask.distributed``.

The image ``(Y, X)`` or volume ``(Z, Y, X)`` (a TIFF read lazily through tifffile's zarr interface, or
a zarr / OME-Zarr array) is cut into a grid of square (cubic) *blocks*.  Two kinds of task run on the
dask cluster:

1. **Segment** each block with a *halo* of context around it (one object diameter, for the objects
   that cross the block's face, plus the larger of another diameter and the network's receptive
   radius, so that every pixel of those objects has its full context; at least 32 px; in z,
   divided by the anisotropy): network and
   post-processing run on block + halo, exactly as :func:`unetflow.predict.predict_instances` (or
   :func:`unetflow.volume.predict_volume`) does on a whole image.  An object is kept by the one
   block whose core holds its centroid (StarDist's ``predict_instances_big`` rule: each object
   belongs to the block responsible for it), whole, including the part that reaches into the halo.
   Kept objects get ids unique over the image (the block's index times 2**20 plus the local id) and
   go to a temporary zarr store, one array per block.
2. **Compose** each output block from the kept objects of itself and its neighbours (8 in 2-D, 26 in
   3-D) that reach into it, and write it to the OME-Zarr label image (chunks = blocks: no two tasks
   write one chunk).

Why this rule rather than Cellpose's linking of labels across block faces: with a halo of two
diameters both neighbours see an object crossing their border whole and with full context, so one
of them can simply own it; nothing has to be merged afterwards, and two distinct objects that touch
across a face can never be merged by mistake.  Memory per task is bounded by the block size, and the
number of tasks in flight by the number of workers, whatever the image size.

Intensity normalisation uses one set of percentiles for the whole image, estimated on a sample of
windows (:func:`sample_stats`); the object size, when ``"auto"``, is estimated once on the brightest
sample window.
"""
from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .conventions import DEFAULT_TILE
from .formats import create_ome_zarr_labels

__all__ = ["open_array", "sample_stats", "predict_big", "block_grid", "BLOCK_SIZE", "ID_STRIDE"]

logger = logging.getLogger(__name__)

#: Default block sides: 2048 px for images, 128 voxels for stacks (a cube of 128 with the halo of a
#: 17 px object size, resampled at anisotropy 2, is about 27 million voxels: 1.6 GB at the 60 bytes
#: a voxel that three views' outputs take, :mod:`unetflow.volume`).
BLOCK_SIZE = {2: 2048, 3: 128}

#: Ids of block ``k`` are ``k * ID_STRIDE + 1 ...``: unique over the image without a global pass.
ID_STRIDE = 2 ** 20


def open_array(path, volume: bool = False):
    """A lazily read ``(H, W)`` or ``(H, W, C)`` array (with `volume`, ``(Z, Y, X)`` or ``(Z, Y, X, C)``):
    a TIFF (through tifffile's zarr store), a zarr array, or the full-resolution level of an OME-Zarr
    image.  Nothing is read until sliced."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input image not found")
    if path.is_dir() or path.suffix == ".zarr":
        node = zarr.open(str(path), mode="r")
    else:
        import tifffile
        try:
            node = zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
        except Exception as exc:
            raise ValueError(f"{path}: cannot be read as a TIFF ({exc})") from exc
    if isinstance(node, zarr.Group):
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        key = multiscales[0]["datasets"][0]["path"] if multiscales else sorted(node.array_keys())[0]
        node = node[key]
    if node.ndim not in ((3, 4) if volume else (2, 3)):
        expected = "a volume (Z, Y, X) or (Z, Y, X, C)" if volume else "a 2-D image (H, W) or (H, W, C)"
        raise ValueError(f"{path}: expected {expected}, got shape {node.shape}")
    return node


def sample_stats(array, config, *, spatial: int = 2, windows: int = 32, side: int = 256, seed: int = 0):
    """Normalisation statistics of a huge image (`spatial` 2) or volume (3) from `windows` random YX
    windows of `side` px (of random z slices), and the brightest of them (for the object-size
    estimate).  Returns ``(InputStats, window)``."""
    from .preprocess import input_stats

    rng = np.random.default_rng(seed)
    lead = [rng.integers(0, n, windows) for n in array.shape[:spatial - 2]]  # z, for a volume
    H, W = array.shape[spatial - 2:spatial]
    sy, sx = min(side, H), min(side, W)
    corners = zip(*lead, rng.integers(0, H - sy + 1, windows), rng.integers(0, W - sx + 1, windows))
    crops = [np.asarray(array[(*c[:-2], slice(c[-2], c[-2] + sy), slice(c[-1], c[-1] + sx))]) for c in corners]
    stats = input_stats(np.concatenate(crops, axis=0), config)
    brightest = max(crops, key=lambda c: float(np.mean(c)) * (-1 if any(stats.invert) else 1))
    return stats, brightest


@dataclass(frozen=True)
class Block:
    """One block of the grid: its core and its context (core + halo, clipped to the image), each a
    ``(start, stop)`` pair per spatial axis, and the halo asked for (px per axis)."""
    index: int
    core: tuple
    context: tuple
    halo: tuple

    def region(self, which: str = "core") -> tuple:
        """The slices of the image that are the block's core (or context)."""
        return tuple(slice(a, b) for a, b in getattr(self, which))


def block_grid(shape, block: int, halo) -> list:
    """The blocks of an image of spatial `shape` ((Y, X) or (Z, Y, X)): cores of `block` px a side and
    their context with `halo` px (one number, or one per axis) around them."""
    halo = tuple(int(h) for h in np.broadcast_to(halo, (len(shape),)))
    out = []
    for corner in itertools.product(*(range(0, n, block) for n in shape)):
        core = tuple((a, min(a + block, n)) for a, n in zip(corner, shape))
        context = tuple((max(0, a - h), min(n, b + h)) for (a, b), h, n in zip(core, halo, shape))
        out.append(Block(len(out), core, context, halo))
    return out


_RUNS = {}


def _run(run_dir, precision):
    """Each worker process loads the run once."""
    from .predict import load_run

    key = (str(run_dir), precision)
    if key not in _RUNS:
        _RUNS[key] = load_run(run_dir, precision=precision)
    return _RUNS[key]


def _segment_block(run_dir, precision, source, block: Block, stats, diameter, tmp, tile_size, volume):
    """Task 1: labels of the block's context; keep the objects whose centroid is in the core.
    `volume`: None for an image, else :func:`unetflow.volume.predict_volume`'s options."""
    import zarr

    from .predict import predict_instances
    from .volume import predict_volume

    run = _run(run_dir, precision)
    image = np.asarray(open_array(source, volume=volume is not None)[block.region("context")])
    if volume is None:
        labels, _ = predict_instances(run, image, diameter=diameter, input_stats=stats,
                                      tile_size=tile_size or DEFAULT_TILE)
    else:
        labels, _ = predict_volume(run, image, diameter=diameter, input_stats=stats, tile_size=tile_size, **volume)
    n = int(labels.max())
    kept = np.zeros(n + 1, bool)
    if n:
        flat = labels.ravel()
        area = np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1)
        kept[1:] = True
        for axis, ((lo, hi), (start, _)) in enumerate(zip(block.core, block.context)):
            along = [1] * labels.ndim
            along[axis] = -1
            coord = np.broadcast_to(np.arange(labels.shape[axis]).reshape(along), labels.shape).ravel()
            centre = np.bincount(flat, coord, minlength=n + 1)[1:] / area + start
            kept[1:] &= (centre >= lo) & (centre < hi)
    ids = np.where(kept, np.arange(n + 1, dtype=np.uint64) + block.index * ID_STRIDE, 0).astype(np.uint32)
    zarr.open_array(str(tmp / f"b{block.index}"), mode="w", shape=labels.shape, chunks=labels.shape,
                    dtype=np.uint32, zarr_format=2)[:] = ids[labels]
    return int(kept.sum())


def _compose_block(block: Block, neighbours, tmp, out):
    """Task 2: the output block from the objects its own and its neighbours' kept that reach into it."""
    import zarr

    labels = np.zeros([b - a for a, b in block.core], np.uint32)
    for nb in [block] + [b for b in neighbours if b.index != block.index]:  # its own objects first
        overlap = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(block.core, nb.context)]
        if any(lo >= hi for lo, hi in overlap):
            continue
        part = zarr.open_array(str(tmp / f"b{nb.index}"), mode="r")[
            tuple(slice(lo - c, hi - c) for (lo, hi), (c, _) in zip(overlap, nb.context))]
        view = labels[tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(overlap, block.core))]
        view[view == 0] = part[view == 0]
    zarr.open_array(str(out / "0"), mode="r+")[block.region()] = labels
    return int(len(np.unique(labels)) - (labels == 0).any())


def predict_big(run_dir, source, out, *, block_size: int | None = None, diameter=None, volume: bool = False,
                anisotropy: float | None = None, mode: str = "3d", stitch_threshold: float = 0.25,
                scheduler=None, workers: int | None = None, precision: str = "auto", tile_size: int | None = None,
                progress: bool = True) -> dict:
    """Segment a huge image or volume block by block on dask and write an OME-Zarr label image.

    Parameters
    ----------
    run_dir : path
        A trained run.
    source : path
        TIFF, zarr array or OME-Zarr image, ``(H, W)`` or ``(H, W, C)`` (with `volume`, ``(Z, Y, X)``
        or ``(Z, Y, X, C)``); read lazily.
    out : path
        The OME-Zarr label image to write (``.zarr``); written under a temporary name, then renamed.
    block_size : int, optional
        Side of the blocks (px, or voxels of the stack; default ``BLOCK_SIZE``); memory per task grows
        with its square (cube).
    diameter : None, float or "auto"
        As :func:`unetflow.predict.predict_instances` (None: the run's own sizing); ``"auto"`` is
        estimated once, on the brightest sample window (of a YX slice), and used for every block.
    volume : bool
        The source is a stack, segmented as :func:`unetflow.volume.predict_volume` does, with
        `anisotropy` (default: from the TIFF's metadata, else 1), `mode` and `stitch_threshold`.
        The labels keep the TIFF's voxel size.
    scheduler : str, optional
        Address of a running dask scheduler (e.g. from dask-jobqueue on SLURM); by default a
        ``LocalCluster`` of `workers` processes.
    workers : int, optional
        Processes of the local cluster (default 1: TensorFlow already uses every core).
    tile_size : int, optional
        The network's tiles (cubes, for a 3-D network) within a block; default as in-memory prediction.

    Returns
    -------
    dict with the spatial shape, blocks, block size, halo (px per axis), the diameter used, the
    anisotropy (for a volume) and the number of objects.
    """
    from distributed import Client, LocalCluster

    from .geometry import receptive_radius
    from .io import anisotropy_of, voxel_size
    from .rundir import RunDir, read_run
    from .sizing import choose_sizing, zoom_factor
    from .tasks import get_task
    from .volume import check_anisotropy, check_volume_run

    spatial = 3 if volume else 2
    block_size = BLOCK_SIZE[spatial] if block_size is None else block_size
    if int(block_size) != block_size or block_size < 64:
        raise ValueError(f"`block_size` must be an integer of at least 64 px, got {block_size!r}")
    out = Path(out)
    if out.suffix != ".zarr":
        raise ValueError(f"{out}: the block-wise output is an OME-Zarr image; give a path ending in .zarr")
    array = open_array(source, volume=volume)
    shape = tuple(array.shape[:spatial])
    # the main process reads only the run's files: TensorFlow runs in the workers alone
    run_dir = str(RunDir(run_dir).path.resolve())  # a ready model's name, as the workers will see it
    config, meta, _ = read_run(run_dir)
    train_d = meta.get("train_median_diameter")
    diameter = choose_sizing(diameter, config, train_d, f"{run_dir} (meta.json has no train_median_diameter)")
    if volume:
        check_volume_run(config.model.task, mode, diameter, run_dir)
    elif get_task(config.model.task).spatial_dims == 3:
        raise ValueError(f"{run_dir} is a 3-D network: it segments volumes (volume=True, predict --3d)")
    voxel = voxel_size(source) if volume else None
    aniso = check_anisotropy(anisotropy or anisotropy_of(voxel))
    options = dict(anisotropy=aniso, mode=mode, stitch_threshold=stitch_threshold) if volume else None
    stats, window = sample_stats(array, config.input, spatial=spatial)
    cluster = None if scheduler else LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                                                  dashboard_address=None)
    client = Client(scheduler or cluster)
    try:
        if diameter == "auto":  # once, on the brightest sample window, in a worker: one size for every block
            diameter = client.submit(_estimate, run_dir, precision, window, stats,
                                     pure=False).result() or "native"
        factor = zoom_factor(train_d, diameter)
        size = diameter if diameter != "native" else (train_d or 30.0)  # object size (px) for the halo
        multiple = RunDir(run_dir).model_params(config)["input_multiple"]
        halo = int(np.ceil(max(size + max(size, receptive_radius(multiple) / factor), 32)))
        halos = (int(np.ceil(halo / aniso)), halo, halo) if volume else halo  # in z, fewer voxels a diameter
        blocks = block_grid(shape, int(block_size), halos)
        if len(blocks) * ID_STRIDE >= 2 ** 32:
            raise ValueError(f"{len(blocks)} blocks are too many for unique uint32 ids; use larger blocks")
        kept = _run_blocks(client, blocks, run_dir, precision, source, stats, diameter, tile_size, options, out,
                           int(block_size), voxel, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {"shape": shape, "blocks": len(blocks), "block_size": int(block_size), "halo": blocks[0].halo,
            "diameter": diameter, **({"anisotropy": aniso} if volume else {}), "objects": kept, "out": str(out)}


def _estimate(run_dir, precision, window, stats):
    from .preprocess import prepare_image
    from .sizing import estimate_diameter

    run = _run(run_dir, precision)
    x = prepare_image(window, run.config.input, stats)
    return estimate_diameter(run.model, x, task=run.task, train_diameter=run.train_diameter,
                             postprocess=run.postprocess_config())


def _run_blocks(client, blocks, run_dir, precision, source, stats, diameter, tile_size, volume, out, block_size,
                voxel, progress):
    """Both stages on the cluster; the output is written under a temporary name, then renamed."""
    from distributed import as_completed
    from .progress import progress_bar

    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_blocks = out.with_name(f".{out.name}.blocks")
    for p in (tmp_out, tmp_blocks):
        shutil.rmtree(p, ignore_errors=True)
    tmp_blocks.mkdir(parents=True)
    shape = tuple(b for _, b in blocks[-1].core)
    create_ome_zarr_labels(tmp_out, shape, (block_size,) * len(shape), scale=voxel)
    try:
        args = (run_dir, precision, str(Path(source).resolve()))
        seg = [client.submit(_segment_block, *args, b, stats, diameter, tmp_blocks, tile_size, volume,
                             key=f"segment-{b.index}", pure=False) for b in blocks]
        bar = progress_bar(total=2 * len(blocks), desc="blocks (segment, compose)", unit="task", enabled=progress)
        kept = 0
        for f in as_completed(seg):
            kept += f.result()
            bar.update()
        grid = {tuple(a for a, _ in b.core): b for b in blocks}
        comp = []
        for b in blocks:
            near = [grid.get(tuple(a + step * block_size for (a, _), step in zip(b.core, steps)))
                    for steps in itertools.product((-1, 0, 1), repeat=len(b.core))]
            comp.append(client.submit(_compose_block, b, [n for n in near if n is not None], tmp_blocks, tmp_out,
                                      key=f"compose-{b.index}", pure=False))
        for f in as_completed(comp):
            f.result()
            bar.update()
        bar.close()
    finally:
        shutil.rmtree(tmp_blocks, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    tmp_out.rename(out)
    return kept
