"""The napari plugin (npe2 manifest ``unetflow/napari.yaml``): a widget that segments the current
image layer with a trained run or the shipped ``nuclei`` model, and a reader for Cellpose
``_seg.npy`` files and unetflow's label TIFFs (images and stacks).

Nothing here imports napari: the widget is a plain function that napari turns into a form
(``autogenerate``), and its result is a list of layer-data tuples, so it also runs headless.  (No
``from __future__ import annotations``: magicgui reads the ``Annotated`` widget options from the
live annotations.)
"""

from pathlib import Path
from typing import Annotated, List, Optional

import numpy as np

__all__ = ["segment", "get_reader", "read_outputs"]

_RUNS: dict = {}  # loaded runs by name or path: a second click does not reload the network


# typing.List in the return annotation: napari's return-type registry knows List[LayerDataTuple]
def segment(image: "napari.layers.Image", second_channel: Optional["napari.layers.Image"] = None,
            run: str = "nuclei", diameter: float = 0.0, tta: bool = False,
            tuned_thresholds: bool = True,
            cellprob_threshold: Annotated[float, {"min": -20.0, "max": 20.0, "step": 0.25}] = 0.0,
            flow_threshold: Annotated[float, {"min": 0.0, "max": 5.0, "step": 0.1}] = 0.4,
            ) -> List["napari.types.LayerDataTuple"]:
    """Segment an image layer into a Labels layer (and, for a flow model, its flows as RGB).

    Parameters
    ----------
    image : napari Image layer (or anything with ``.data``; an array works too)
        A 2-D grey or RGB image, or a two-channel one (``(H, W, 2)``, or ``(2, H, W)`` as napari
        keeps stains) for a two-channel model, or the first channel of it (e.g. cytoplasm).
    second_channel : napari Image layer, optional
        The second channel (e.g. nuclei) when the stains are in two layers, as napari opens a
        two-channel file with ``channel_axis``.  A model that takes another number of channels
        says so, naming both counts.
    run : str
        A run directory, or ``nuclei`` (the model shipped with unetflow).
    diameter : float
        Median object diameter in pixels; 0 lets the run choose (``auto`` for runs trained at one
        object size).
    tta : bool
        Test-time flips.
    tuned_thresholds : bool
        Use the thresholds tuned for the run; otherwise `cellprob_threshold` (a logit, so negative
        values are allowed) and `flow_threshold`.
    """
    from .flows import flows_to_rgb
    from .predict import load_run, predict_instances

    from .io import channels_last

    data = channels_last(np.asarray(getattr(image, "data", image)))
    if second_channel is not None:
        extra = np.asarray(getattr(second_channel, "data", second_channel))
        if data.shape[:2] != extra.shape[:2]:
            raise ValueError(f"`second_channel` (shape {extra.shape}) must be the size of `image` (shape {data.shape})")
        data = np.dstack([data, extra])
    name = getattr(image, "name", "image")
    key = str(run)
    if key not in _RUNS:
        _RUNS[key] = load_run(run)
    r = _RUNS[key]
    options = r.postprocess_config()
    overrides = {} if tuned_thresholds else {
        k: v for k, v in (("cellprob_threshold", cellprob_threshold), ("flow_threshold", flow_threshold))
        if hasattr(options, k)}  # a boundary model has neither
    labels, raw = predict_instances(r, data, diameter=diameter or None, tta=tta, **overrides)
    size = f", diameter {raw['diameter']:.1f} px" if raw.get("diameter") else ""
    n_objects = int(np.count_nonzero(np.unique(labels)))
    layers = [(labels, {"name": f"{name} labels", "metadata": {"unetflow_run": key, "objects": n_objects}}, "labels")]
    if "flows" in raw:
        layers.append((flows_to_rgb(raw["flows"]), {"name": f"{name} flows", "rgb": True, "visible": False}, "image"))
    print(f"unetflow: {n_objects} objects in {name}{size}")
    return layers


def read_outputs(path) -> list:
    """Layer-data tuples of a Cellpose ``_seg.npy`` (masks, and flows when it has them) or of a
    label TIFF written by ``unetflow predict``: an image, or a ``(Z, Y, X)`` stack (scaled by its
    voxel size when the file gives it)."""
    from .io import ImageReadError, read_labels, voxel_size

    path = Path(path)
    stem = path.name.removesuffix(".npy").removesuffix(".tif")
    if path.name.endswith("_seg.npy"):
        seg = np.load(path, allow_pickle=True).item()
        if not isinstance(seg, dict) or "masks" not in seg:
            raise ValueError(f"{path}: not a Cellpose _seg.npy (no 'masks')")
        layers = [(np.asarray(seg["masks"]), {"name": stem}, "labels")]
        flows = seg.get("flows")
        if flows is not None and len(flows) and np.ndim(flows[0]) == 4:
            layers.append((np.asarray(flows[0][0]), {"name": f"{stem} flows", "rgb": True, "visible": False},
                           "image"))
        return layers
    voxel = voxel_size(path)
    if voxel is not None:  # a stack with its voxel size (predict --3d): shown at its true proportions
        return [(read_labels(path, ndim=3), {"name": stem, "scale": voxel}, "labels")]
    try:
        return [(read_labels(path), {"name": stem}, "labels")]
    except ImageReadError as exc:
        if "expected (H, W)" not in str(exc):
            raise
        return [(read_labels(path, ndim=3), {"name": stem}, "labels")]


def get_reader(path):
    """npe2 reader hook: a reader for one ``*_seg.npy``, ``*_labels.tif`` or ``*_masks.tif``, else None."""
    if isinstance(path, (list, tuple)):
        return None
    name = str(path)
    if name.endswith(("_seg.npy", "_labels.tif", "_masks.tif")):
        return read_outputs
    return None
