"""Each output format read back with the library the tool it is meant for uses."""
import os
import subprocess
import sys

import numpy as np
import pytest

from unetflow.flows import flows_to_rgb
from unetflow.formats import FORMATS, cellpose_seg, write_outputs
from unetflow.synthetic import synthetic_nuclei

from conftest import random_labels


def _image_and_raw(seed=0, shape=(96, 112)):
    from unetflow.flows import masks_to_flows

    rng = np.random.default_rng(seed)
    _, labels = synthetic_nuclei(rng, shape)
    flows = 5 * masks_to_flows(labels)
    cellprob = np.where(labels > 0, 4.0, -4.0).astype(np.float32) + rng.normal(0, 0.5, labels.shape)
    return labels, {"flows": flows.astype(np.float32), "cellprob": cellprob.astype(np.float32), "diameter": 17.0}


@pytest.mark.parametrize("kind", ["touching", "rect", "holes", "pixels"])
def test_rois_read_by_roifile_are_the_objects(tmp_path, kind):
    """Filled as ImageJ fills a polygon (the pixels whose centres are inside), each ROI is exactly its
    object: its largest 4-connected piece (the objects of random_labels overwrite one another),
    holes filled."""
    roifile = pytest.importorskip("roifile")
    from scipy import ndimage
    from skimage.draw import polygon2mask

    labels = random_labels(np.random.default_rng(3), kind=kind)
    write_outputs(tmp_path, "img", labels, {}, ["rois"])
    rois = roifile.roiread(tmp_path / "img_rois.zip")
    assert sorted(int(r.name) for r in rois) == [i for i in np.unique(labels) if i]
    for roi in rois:
        pieces, _ = ndimage.label(labels == int(roi.name))
        largest = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        # ImageJ's pixel (x, y) covers [x, x + 1) x [y, y + 1): its centre is at (x + 0.5, y + 0.5)
        drawn = polygon2mask(labels.shape, roi.coordinates()[:, ::-1] - 0.5)
        assert np.array_equal(drawn, ndimage.binary_fill_holes(largest)), roi.name


def test_cellpose_seg_layout(tmp_path):
    labels, raw = _image_and_raw(2)
    write_outputs(tmp_path, "img", labels, raw, ["cellpose"], filename=tmp_path / "img.tif")
    import tifffile
    assert np.array_equal(tifffile.imread(tmp_path / "img_masks.tif"), labels)
    seg = np.load(tmp_path / "img_seg.npy", allow_pickle=True).item()
    H, W = labels.shape
    assert np.array_equal(seg["masks"], labels) and seg["masks"].dtype == np.uint16
    # outlines: each object's pixels that touch (4-neighbours) another id or the background, with their id
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros_like(labels, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        edge |= padded[1 + dy:H + 1 + dy, 1 + dx:W + 1 + dx] != labels
    np.testing.assert_array_equal(seg["outlines"], np.where(edge & (labels > 0), labels, 0))
    assert 0 < np.count_nonzero(seg["outlines"]) < np.count_nonzero(labels)  # not the whole masks
    assert seg["filename"] == str(tmp_path / "img.tif") and seg["diameter"] == 17.0
    assert len(seg["ismanual"]) == labels.max()
    rgb, prob, _, _, dp = seg["flows"]
    assert rgb.shape == (1, H, W, 3) and rgb.dtype == np.uint8 and prob.shape == (1, H, W)
    assert dp.shape == (3, H, W) and np.array_equal(dp[:2], raw["flows"]) and np.array_equal(dp[2], raw["cellprob"])
    # boundary and distance models have no flows: masks and outlines only
    assert "flows" not in cellpose_seg(labels, {"probs": np.zeros((H, W, 3))}, "x.tif")


CELLPOSE_PYTHON = os.environ.get("UNETFLOW_CELLPOSE_PYTHON")


@pytest.mark.skipif(not CELLPOSE_PYTHON, reason="set UNETFLOW_CELLPOSE_PYTHON to a Python with cellpose 3")
def test_cellpose_seg_matches_cellposes_own(tmp_path):
    """Cellpose 3's own ``io.masks_flows_to_seg`` on the same masks and flows writes the same layout."""
    labels, raw = _image_and_raw(4)
    np.save(tmp_path / "in.npy", {"masks": labels, **raw}, allow_pickle=True)
    script = f"""
import numpy as np
from cellpose import io, plot
d = np.load({str(tmp_path / 'in.npy')!r}, allow_pickle=True).item()
flows = [plot.dx_to_circ(d["flows"]), d["flows"], d["cellprob"]]
io.masks_flows_to_seg(np.zeros(d["masks"].shape, np.float32), d["masks"], flows, {str(tmp_path / 'ref.tif')!r},
                      diams=17.0)
"""
    subprocess.run([CELLPOSE_PYTHON, "-c", script], check=True, capture_output=True)
    ref = np.load(tmp_path / "ref_seg.npy", allow_pickle=True).item()
    ours = cellpose_seg(labels, raw, str(tmp_path / "ref.tif"), 17.0)
    assert set(ours) == set(ref)
    assert np.array_equal(ours["masks"], ref["masks"])
    assert (ours["outlines"] > 0).sum() == pytest.approx((ref["outlines"] > 0).sum(), rel=0.15)
    for a, b in zip(ours["flows"], ref["flows"]):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and (a.size == 0 or a.dtype == b.dtype)
        assert a.size == 0 or np.abs(a.astype(float) - b.astype(float)).max() <= 1  # uint8 rounding at most


def test_ome_zarr_labels_read_by_ome_zarr_py(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    labels, _ = _image_and_raw(5)
    write_outputs(tmp_path, "img", labels, {}, ["ome-zarr", "labels"])
    nodes = list(Reader(parse_url(str(tmp_path / "img.ome.zarr")))())
    assert np.array_equal(np.asarray(nodes[0].data[0]), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.ome.zarr", "img_labels.tif"]  # no temporaries left


def test_ome_zarr_label_volume_keeps_its_voxel_size(tmp_path):
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from unetflow.formats import write_ome_zarr_labels

    stack = np.zeros((5, 12, 14), np.int32)
    stack[1:4, 2:8, 3:9], stack[2:5, 7:12, 9:14] = 1, 2
    write_ome_zarr_labels(tmp_path / "vol.ome.zarr", stack, scale=(0.5, 0.25, 0.25))
    node, = Reader(parse_url(str(tmp_path / "vol.ome.zarr")))()
    assert np.array_equal(np.asarray(node.data[0]), stack)
    multiscale = node.metadata["coordinateTransformations"][0][0]
    assert multiscale == {"type": "scale", "scale": [0.5, 0.25, 0.25]}
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]


def test_flow_colours_and_bad_format(tmp_path):
    yy, xx = np.mgrid[-8:9, -8:9].astype(np.float32)
    rgb = flows_to_rgb(np.stack([yy, xx]))
    assert rgb.shape == (17, 17, 3) and rgb[8, 8].max() == 0  # no flow, black
    assert len({tuple(rgb[0, 8]), tuple(rgb[16, 8]), tuple(rgb[8, 0]), tuple(rgb[8, 16])}) == 4  # four directions
    with pytest.raises(ValueError, match="unknown output format.*tiff"):
        write_outputs(tmp_path, "img", np.zeros((4, 4), int), {}, ["tiff"])
    assert set(FORMATS) == {"labels", "cellpose", "rois", "ome-zarr"}


@pytest.mark.slow
def test_cli_writes_every_format_quietly(tiny_flow, tmp_path):
    """``unetflow predict --formats ...`` in a fresh process: every file, and none of TensorFlow's
    start-up noise unless --verbose."""
    import tifffile

    rng = np.random.default_rng(6)
    img, _ = synthetic_nuclei(rng, (80, 96))
    tifffile.imwrite(tmp_path / "cells.tif", (img * 255).astype(np.uint8))
    _, run_dir = tiny_flow
    cmd = [sys.executable, "-m", "unetflow.cli", "predict", str(run_dir), str(tmp_path / "cells.tif"),
           "--out", str(tmp_path / "out"), "--formats", *FORMATS]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": ""})
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cells.ome.zarr", "cells_labels.tif", "cells_masks.tif", "cells_rois.zip", "cells_seg.npy"]
    assert "the network runs on CPU" in res.stderr or "the network runs on GPU" in res.stderr
    for noise in ("cuInit", "oneDNN", "cpu_feature_guard", "absl"):
        assert noise not in res.stderr, res.stderr
