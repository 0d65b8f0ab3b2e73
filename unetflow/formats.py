"""Segmentations in the formats other tools open: label TIFFs, Cellpose's ``_seg.npy``, ImageJ/Fiji
ROI sets and OME-Zarr label images.

Every file is written under a temporary name and renamed into place, so an interrupted run leaves
either a whole file or none.  Which tool reads what:

========== ============================================ =====================================
format     files                                        opened by
========== ============================================ =====================================
labels     ``<stem>_labels.tif``                        anything that reads TIFF
cellpose   ``<stem>_masks.tif``, ``<stem>_seg.npy``     the Cellpose GUI (File > Load masks)
rois       ``<stem>_rois.zip``                          Fiji's ROI Manager, ``roifile``
ome-zarr   ``<stem>.ome.zarr``                          napari(-ome-zarr), ``ome-zarr-py``
========== ============================================ =====================================
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .flows import flows_to_rgb
from .io import atomic_write, write_labels

__all__ = ["FORMATS", "write_outputs", "cellpose_seg", "label_polygons", "write_rois",
           "write_ome_zarr_labels", "create_ome_zarr_labels"]

#: Output formats of ``unetflow predict --formats``.
FORMATS = ("labels", "cellpose", "rois", "ome-zarr")


def _outlines(labels) -> np.ndarray:
    """Each object's boundary pixels, carrying its id (Cellpose's ``outlines`` array)."""
    from skimage.segmentation import find_boundaries

    return np.where(find_boundaries(labels, mode="inner"), labels, 0)


def cellpose_seg(labels, raw: dict, filename, diameter=None) -> dict:
    """The dictionary the Cellpose GUI loads from ``<stem>_seg.npy`` (layout of Cellpose 3's
    ``io.masks_flows_to_seg``).

    Parameters
    ----------
    labels : (H, W) int array
    raw : dict
        The raw outputs of :func:`unetflow.predict.predict_instances`; for a flow model ``flows``
        (2, H, W), scaled x5 like Cellpose's, and the ``cellprob`` logit fill the GUI's flow views.
    filename : str
        The image the masks belong to (the GUI opens it beside them).
    diameter : float, optional
        The object diameter used (estimated or given).
    """
    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) < 2 ** 16 - 1 else np.uint32
    seg = {"masks": labels.astype(dtype), "outlines": _outlines(labels).astype(dtype),
           "chan_choose": [0, 0], "ismanual": np.zeros(int(labels.max(initial=0)), bool),
           "filename": str(filename), "diameter": float(diameter) if diameter else 0.0}
    if "flows" in raw:
        dP, cellprob = np.asarray(raw["flows"], np.float32), np.asarray(raw["cellprob"], np.float32)
        lo, hi = np.percentile(cellprob, [1, 99])
        prob8 = (np.clip((cellprob - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        # [RGB flows, cellprob as uint8, (3D z-flow: none), (no trajectories), dP and cellprob as floats]
        seg["flows"] = [flows_to_rgb(dP)[None], prob8[None], np.zeros((1, *labels.shape, 3), np.uint8), [],
                        np.concatenate([dP, cellprob[None]], 0)]
    return seg


def label_polygons(labels):
    """One polygon per object, tracing its outer boundary half-way between object and background
    pixel centres, so that the pixels whose centres fall inside are the object's pixels.

    Yields
    ------
    id : int
    xy : (N, 2) float array
        Vertices in ImageJ's convention: x first, pixel (0, 0) covering [0, 1) x [0, 1).
    """
    from scipy import ndimage
    from skimage.measure import find_contours

    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        obj = np.pad(labels[sl] == i, 1)
        contour = max(find_contours(obj.astype(np.uint8), 0.5), key=len)  # the outer boundary
        yx = contour - 1 + 0.5 + np.array([sl[0].start, sl[1].start])
        yield i, yx[:, ::-1]


def write_rois(path, labels) -> Path:
    """An ImageJ/Fiji ROI set (``.zip``): one polygon per object, named by its id."""
    import roifile

    rois = [roifile.ImagejRoi.frompoints(xy.astype(np.float32), name=f"{i}")
            for i, xy in label_polygons(np.asarray(labels))]
    # mode "w": the temporary file exists already, and roiwrite would append to it
    return atomic_write(path, lambda tmp: roifile.roiwrite(tmp, rois, mode="w"))


def create_ome_zarr_labels(path, shape, chunks, scale=None):
    """An empty OME-Zarr (NGFF 0.4) label image: one full-resolution uint32 level ``0``.

    `shape` is ``(Y, X)`` or ``(Z, Y, X)``; `scale` the pixel (voxel) size per axis in micrometres
    (None: 1 per axis, no unit).
    """
    try:
        import zarr
    except ImportError:
        raise ImportError("the ome-zarr format needs zarr: pip install 'unetflow[big]'") from None

    names = "zyx"[-len(shape):]
    unit = {} if scale is None else {"unit": "micrometer"}
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=shape, chunks=chunks, dtype=np.uint32, fill_value=0)
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": "labels",
        "axes": [{"name": n, "type": "space", **unit} for n in names],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in (scale or [1.0] * len(shape))]}]}]}]
    root.attrs["image-label"] = {"version": "0.4"}
    return root


def write_ome_zarr_labels(path, labels, chunks: int = 1024, scale=None) -> Path:
    """Labels ``(Y, X)`` or ``(Z, Y, X)`` as an OME-Zarr label image (voxel size `scale`, um, if
    known), written beside the target and renamed into place.  Chunks are `chunks` pixels a side
    in 2-D and 128 voxels a side in 3-D."""
    import zarr

    path = Path(path)
    labels = np.asarray(labels)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    side = chunks if labels.ndim == 2 else 128
    create_ome_zarr_labels(tmp, labels.shape, tuple(min(side, s) for s in labels.shape), scale)
    zarr.open_array(str(tmp / "0"), mode="r+")[:] = labels
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def write_outputs(out_dir, stem: str, labels, raw: dict, formats=("labels",), filename=None) -> list:
    """Write one image's segmentation in each of `formats` (:data:`FORMATS`) into `out_dir`.

    Returns
    -------
    list of Path
        The files (and ``.ome.zarr`` folders) written.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}: choose from {list(FORMATS)}")
    out = Path(out_dir)
    written = []
    if "labels" in formats:
        written.append(write_labels(out / f"{stem}_labels.tif", labels))
    if "cellpose" in formats:
        written.append(write_labels(out / f"{stem}_masks.tif", labels))
        seg = cellpose_seg(labels, raw, filename or stem, raw.get("diameter"))
        written.append(atomic_write(out / f"{stem}_seg.npy", lambda tmp: np.save(tmp, seg, allow_pickle=True)))
    if "rois" in formats:
        written.append(write_rois(out / f"{stem}_rois.zip", labels))
    if "ome-zarr" in formats:
        written.append(write_ome_zarr_labels(out / f"{stem}.ome.zarr", labels))
    return written
