"""Block-wise prediction of images too large for memory, on ``dask.distributed``.

The image (a TIFF read lazily through tifffile's zarr interface, or a zarr / OME-Zarr array) is cut
into a grid of square *blocks*.  Two kinds of task run on the dask cluster:

1. **Segment** each block with a *halo* of context around it (at least twice the objects' diameter,
   and the network's receptive radius): network and post-processing run on block + halo, exactly as
   :func:`unetflow.predict.predict_instances` does on a whole image.  An object is kept by the one
   block whose core holds its centroid (StarDist's ``predict_instances_big`` rule: each object
   belongs to the block responsible for it), whole, including the part that reaches into the halo.
   Kept objects get ids unique over the image (the block's index times 2**20 plus the local id) and
   go to a temporary zarr store, one array per block.
2. **Compose** each output block from the kept objects of itself and its eight neighbours that reach
   into it, and write it to the OME-Zarr label image (chunks = blocks: no two tasks write one chunk).

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

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .conventions import DEFAULT_TILE
from .formats import create_ome_zarr_labels

__all__ = ["open_array", "sample_stats", "predict_big", "block_grid", "ID_STRIDE"]

logger = logging.getLogger(__name__)

#: Ids of block ``k`` are ``k * ID_STRIDE + 1 ...``: unique over the image without a global pass.
ID_STRIDE = 2 ** 20


def open_array(path):
    """A lazily read ``(H, W)`` or ``(H, W, C)`` array: a TIFF (through tifffile's zarr store), a zarr
    array, or the full-resolution level of an OME-Zarr image.  Nothing is read until sliced."""
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
    if node.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D image (H, W) or (H, W, C), got shape {node.shape}")
    return node


def sample_stats(array, config, *, windows: int = 32, side: int = 256, seed: int = 0):
    """Normalisation statistics of a huge image from `windows` random windows of `side` px, and the
    brightest of them (for the object-size estimate).  Returns ``(InputStats, window)``."""
    from .preprocess import input_stats

    H, W = array.shape[:2]
    rng = np.random.default_rng(seed)
    sy, sx = min(side, H), min(side, W)
    crops = [np.asarray(array[y:y + sy, x:x + sx]) for y, x in
             zip(rng.integers(0, H - sy + 1, windows), rng.integers(0, W - sx + 1, windows))]
    stats = input_stats(np.concatenate(crops, axis=0), config)
    brightest = max(crops, key=lambda c: float(np.mean(c)) * (-1 if any(stats.invert) else 1))
    return stats, brightest


@dataclass(frozen=True)
class Block:
    index: int
    core: tuple      # (y0, y1, x0, x1)
    context: tuple   # core + halo, clipped to the image


def block_grid(shape, block: int, halo: int) -> list:
    """The blocks of an image of `shape` (H, W): cores of `block` px and their context with `halo`."""
    H, W = shape
    out = []
    for i, y0 in enumerate(range(0, H, block)):
        for j, x0 in enumerate(range(0, W, block)):
            y1, x1 = min(y0 + block, H), min(x0 + block, W)
            out.append(Block(len(out), (y0, y1, x0, x1),
                             (max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo))))
    return out


_RUNS = {}


def _run(run_dir, precision):
    """Each worker process loads the run once."""
    from .predict import load_run

    key = (str(run_dir), precision)
    if key not in _RUNS:
        _RUNS[key] = load_run(run_dir, precision=precision)
    return _RUNS[key]


def _segment_block(run_dir, precision, source, block: Block, stats, diameter, tmp, tile_size):
    """Task 1: labels of the block's context; keep the objects whose centroid is in the core."""
    import zarr

    from .predict import predict_instances

    run = _run(run_dir, precision)
    y0, y1, x0, x1 = block.context
    image = np.asarray(open_array(source)[y0:y1, x0:x1])
    labels, _ = predict_instances(run, image, diameter=diameter, input_stats=stats, tile_size=tile_size)
    n = int(labels.max())
    kept = np.zeros(n + 1, bool)
    if n:
        flat = labels.ravel()
        area = np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1)
        rows, cols = np.indices(labels.shape)
        cy = np.bincount(flat, rows.ravel(), minlength=n + 1)[1:] / area + y0
        cx = np.bincount(flat, cols.ravel(), minlength=n + 1)[1:] / area + x0
        c0, c1, c2, c3 = block.core
        kept[1:] = (cy >= c0) & (cy < c1) & (cx >= c2) & (cx < c3)
    ids = np.where(kept, np.arange(n + 1, dtype=np.uint64) + block.index * ID_STRIDE, 0).astype(np.uint32)
    zarr.open_array(str(tmp / f"b{block.index}"), mode="w", shape=labels.shape, chunks=labels.shape,
                    dtype=np.uint32, zarr_format=2)[:] = ids[labels]
    return int(kept.sum())


def _compose_block(block: Block, neighbours, tmp, out):
    """Task 2: the output block from the objects its own and its neighbours' kept that reach into it."""
    import zarr

    y0, y1, x0, x1 = block.core
    labels = np.zeros((y1 - y0, x1 - x0), np.uint32)
    for nb in [block] + [b for b in neighbours if b.index != block.index]:  # its own objects first
        a0, a1, b0, b1 = nb.context
        oy0, oy1, ox0, ox1 = max(y0, a0), min(y1, a1), max(x0, b0), min(x1, b1)
        if oy0 >= oy1 or ox0 >= ox1:
            continue
        part = zarr.open_array(str(tmp / f"b{nb.index}"), mode="r")[oy0 - a0:oy1 - a0, ox0 - b0:ox1 - b0]
        view = labels[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
        view[view == 0] = part[view == 0]
    zarr.open_array(str(out / "0"), mode="r+")[y0:y1, x0:x1] = labels
    return int(len(np.unique(labels)) - (labels == 0).any())


def predict_big(run_dir, source, out, *, block_size: int = 2048, diameter=None, scheduler=None,
                workers: int | None = None, precision: str = "auto", tile_size: int = DEFAULT_TILE,
                progress: bool = True) -> dict:
    """Segment a huge image block by block on dask and write an OME-Zarr label image.

    Parameters
    ----------
    run_dir : path
        A trained run.
    source : path
        TIFF, zarr array or OME-Zarr image, ``(H, W)`` or ``(H, W, C)``; read lazily.
    out : path
        The OME-Zarr label image to write (``.zarr``); written under a temporary name, then renamed.
    block_size : int
        Side of the blocks (px); memory per task grows with its square.
    diameter : None, float or "auto"
        As :func:`unetflow.predict.predict_instances` (None: the run's own sizing); ``"auto"`` is
        estimated once, on the brightest sample window, and used for every block.
    scheduler : str, optional
        Address of a running dask scheduler (e.g. from dask-jobqueue on SLURM); by default a
        ``LocalCluster`` of `workers` processes.
    workers : int, optional
        Processes of the local cluster (default 1: TensorFlow already uses every core).

    Returns
    -------
    dict with the image shape, blocks, halo, the diameter used, and the number of objects.
    """
    from distributed import Client, LocalCluster

    from .geometry import receptive_radius
    from .rundir import RunDir, read_run
    from .sizing import choose_sizing, zoom_factor

    if int(block_size) != block_size or block_size < 64:
        raise ValueError(f"`block_size` must be an integer of at least 64 px, got {block_size!r}")
    out = Path(out)
    if out.suffix != ".zarr":
        raise ValueError(f"{out}: the block-wise output is an OME-Zarr image; give a path ending in .zarr")
    array = open_array(source)
    H, W = array.shape[:2]
    # the main process reads only the run's files: TensorFlow runs in the workers alone
    config, meta, _ = read_run(run_dir)
    train_d = meta.get("train_median_diameter")
    diameter = choose_sizing(diameter, config, train_d, f"{run_dir} (meta.json has no train_median_diameter)")
    stats, window = sample_stats(array, config.input)
    cluster = None if scheduler else LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                                                  dashboard_address=None)
    client = Client(scheduler or cluster)
    try:
        if diameter == "auto":  # once, on the brightest sample window, in a worker: one size for every block
            diameter = client.submit(_estimate, str(Path(run_dir).resolve()), precision, window, stats,
                                     pure=False).result() or "native"
        factor = zoom_factor(train_d, diameter)
        size = diameter if diameter != "native" else (train_d or 30.0)  # object size (px) for the halo
        multiple = RunDir(run_dir).model_params(config)["input_multiple"]
        halo = int(np.ceil(max(2 * size, receptive_radius(multiple) / factor, 32)))
        blocks = block_grid((H, W), int(block_size), halo)
        if len(blocks) * ID_STRIDE >= 2 ** 32:
            raise ValueError(f"{len(blocks)} blocks are too many for unique uint32 ids; use larger blocks")
        kept = _run_blocks(client, blocks, run_dir, precision, source, stats, diameter, tile_size, out,
                           int(block_size), progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {"shape": (H, W), "blocks": len(blocks), "block_size": int(block_size), "halo": halo,
            "diameter": diameter, "objects": kept, "out": str(out)}


def _estimate(run_dir, precision, window, stats):
    from .preprocess import prepare_image
    from .sizing import estimate_diameter

    run = _run(run_dir, precision)
    x = prepare_image(window, run.config.input, stats)
    return estimate_diameter(run.model, x, task=run.task, train_diameter=run.train_diameter,
                             postprocess=run.postprocess_config())


def _run_blocks(client, blocks, run_dir, precision, source, stats, diameter, tile_size, out, block_size, progress):
    """Both stages on the cluster; the output is written under a temporary name, then renamed."""
    from distributed import as_completed
    from .progress import progress_bar

    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_blocks = out.with_name(f".{out.name}.blocks")
    for p in (tmp_out, tmp_blocks):
        shutil.rmtree(p, ignore_errors=True)
    tmp_blocks.mkdir(parents=True)
    create_ome_zarr_labels(tmp_out, blocks[-1].core[1::2], (block_size, block_size))
    try:
        args = (str(Path(run_dir).resolve()), precision, str(Path(source).resolve()))
        seg = [client.submit(_segment_block, *args, b, stats, diameter, tmp_blocks, tile_size,
                             key=f"segment-{b.index}", pure=False) for b in blocks]
        bar = progress_bar(total=2 * len(blocks), desc="blocks (segment, compose)", unit="task", enabled=progress)
        kept = 0
        for f in as_completed(seg):
            kept += f.result()
            bar.update()
        grid = {(b.core[0], b.core[2]): b for b in blocks}
        comp = []
        for b in blocks:
            near = [grid.get((b.core[0] + dy * block_size, b.core[2] + dx * block_size))
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
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
