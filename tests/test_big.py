"""Block-wise prediction of a large image or stack on dask: the same objects as in memory, one id each."""
import re

import numpy as np
import pytest
import tifffile

from unetflow.big import block_grid, predict_big
from unetflow.metrics import matching
from unetflow.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def mosaic(tiny_flow, tmp_path_factory):
    """A 600 x 700 synthetic image segmented block-wise (blocks of 192: 4 x 4) and in memory."""
    zarr = pytest.importorskip("zarr")  # the block grid's logic below needs neither zarr nor dask
    pytest.importorskip("distributed")
    from unetflow.predict import load_run, predict_instances

    _, run_dir = tiny_flow
    tmp = tmp_path_factory.mktemp("big")
    image, truth = synthetic_nuclei(np.random.default_rng(5), (600, 700))
    tifffile.imwrite(tmp / "big.tif", image.astype(np.float32), tile=(128, 128))  # read tile by tile
    summary = predict_big(run_dir, tmp / "big.tif", tmp / "out.zarr", block_size=192, progress=False)
    blocks = zarr.open(str(tmp / "out.zarr"), mode="r")["0"][:]
    in_memory, _ = predict_instances(load_run(run_dir), image)
    return summary, blocks, in_memory, tmp


def test_blockwise_matches_in_memory(mosaic):
    summary, blocks, in_memory, _ = mosaic
    assert summary["blocks"] == 16 and blocks.shape == in_memory.shape
    # every object away from the image border is found block-wise at IoU >= 0.9
    from unetflow.viz import per_object_iou
    away = np.unique(in_memory[20:-20, 20:-20])
    away = away[away > 0]
    iou = per_object_iou(in_memory, blocks.astype(np.int64), 0.5)
    ids = np.unique(in_memory)[1:]
    assert len(away) > 100 and np.all(iou[np.isin(ids, away)] >= 0.9)
    m = matching(in_memory, blocks.astype(np.int64), thresh=0.9)
    assert m.tp >= 0.99 * in_memory.max()


def test_objects_across_block_corners_stay_whole_and_ids_are_unique(mosaic):
    _, blocks, in_memory, _ = mosaic
    ids, areas = np.unique(blocks, return_counts=True)
    # ids unique: each id is one connected object
    from scipy import ndimage
    for i in ids[1:]:
        assert ndimage.label(blocks == i)[1] == 1
    # objects lying across a corner of four blocks (192, 384 in y; 192, 384, 576 in x) are one object:
    # one id over (nearly) all of the in-memory object; a pixel or two of its outline may differ, as
    # the flows are followed from another context
    corners = [(y, x) for y in (192, 384) for x in (192, 384, 576)]
    crossing = [in_memory[y, x] for y, x in corners if in_memory[y, x] > 0]
    assert crossing, "no object on a block corner in this image"
    for y, x in corners:
        if in_memory[y, x]:
            obj = in_memory == in_memory[y, x]
            ids, counts = np.unique(blocks[obj][blocks[obj] > 0], return_counts=True)
            assert len(ids) == 1 and counts[0] >= 0.95 * obj.sum() and blocks[y, x] > 0


def test_output_opens_as_ome_zarr_labels(mosaic):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, blocks, _, tmp = mosaic
    nodes = list(Reader(parse_url(str(tmp / "out.zarr")))())
    assert nodes and "image-label" in zarr.open(str(tmp / "out.zarr"), mode="r").attrs
    data = nodes[0].data[0]
    assert data.shape == blocks.shape and np.array_equal(np.asarray(data), blocks)


def test_block_grid_and_errors(tmp_path):
    grid = block_grid((500, 300), 200, 30)
    assert len(grid) == 3 * 2 and grid[0].context == ((0, 230), (0, 230)) and grid[-1].core == ((400, 500), (200, 300))
    assert grid[3].core == ((200, 400), (200, 300)) and grid[3].region("context") == (slice(170, 430), slice(170, 300))
    # a volume: blocks in z too, with a halo of its own along z (fewer voxels a diameter when anisotropic)
    grid = block_grid((80, 96, 96), 64, (26, 51, 51))
    assert len(grid) == 2 * 2 * 2 and grid[0].context == ((0, 80), (0, 96), (0, 96))
    assert grid[-1].core == ((64, 80), (64, 96), (64, 96)) and grid[-1].context == ((38, 80), (13, 96), (13, 96))
    with pytest.raises(ValueError, match=r"\.zarr"):
        predict_big("run", tmp_path / "x.tif", tmp_path / "out.tif")
    with pytest.raises(FileNotFoundError, match="x.tif"):
        predict_big("run", tmp_path / "x.tif", tmp_path / "out.zarr")


@pytest.mark.slow
def test_a_stack_block_by_block_matches_in_memory(tmp_path, capsys):
    """``unetflow predict --model nuclei STACK.tif --3d --out LABELS.zarr``: an anisotropic stack of
    spheres segmented in blocks of 64 voxels (2 x 2 x 2, the halo along z divided by the anisotropy
    read from the file) finds the same spheres as in memory, those across a block face or the
    blocks' common corner whole and with one id, and keeps the file's voxel size."""
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("distributed")
    from scipy import ndimage
    from test_volume import _blobs

    from unetflow.cli import main
    from unetflow.io import write_volume_labels
    from unetflow.volume import predict_volume

    # isotropic z; the stack's z is half of it.  Centres 2 px off the faces (64 in the stack): an
    # object's owner is clear, and it reaches 6 px into its neighbours
    centres = [(132, 62, 66),                # across the corner of all eight blocks
               (132, 30, 70), (60, 66, 30), (60, 30, 62),  # across a z, a y and an x face
               (60, 30, 30), (150, 80, 20), (20, 80, 80)]
    truth = _blobs((160, 96, 96), centres, radius=8)[::2]  # 17 px spheres, every second z: anisotropy 2
    stack = np.where(truth > 0, 200, 20) + np.random.default_rng(0).integers(0, 10, truth.shape)
    write_volume_labels(tmp_path / "stack.tif", stack.astype(np.uint16), (0.5, 0.25, 0.25))
    assert main(["predict", "--model", "nuclei", str(tmp_path / "stack.tif"), "--3d", "--diameter", "17",
                 "--out", str(tmp_path / "out.zarr"), "--block-size", "64"]) == 0
    halo = re.search(r"8 blocks of 64 px, halo (\d+) x (\d+) x (\d+) px, anisotropy 2.00", capsys.readouterr().out)
    assert halo and int(halo[1]) == np.ceil(int(halo[2]) / 2) and halo[2] == halo[3]  # z: half the voxels
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    blocks = root["0"][:].astype(np.int64)
    scale = root.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert blocks.shape == truth.shape and scale == pytest.approx([0.5, 0.25, 0.25])
    in_memory, _ = predict_volume("nuclei", stack, anisotropy=2.0, diameter=17)
    assert matching(truth, in_memory, 0.5).tp == len(centres)  # the model sees every sphere
    m = matching(in_memory, blocks, 0.9)
    assert m.tp == m.n_true == m.n_pred == len(centres), m
    for i in np.unique(blocks)[1:]:  # one id, one connected object
        assert ndimage.label(blocks == i)[1] == 1
    corner = blocks[truth == 1]
    assert len(np.unique(corner[corner > 0])) == 1 and blocks[64, 64, 64] > 0 and truth[64, 64, 64] == 1
