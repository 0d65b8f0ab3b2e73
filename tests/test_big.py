"""Block-wise prediction of a large image on dask: the same objects as in memory, one id each."""
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
    # objects lying across a corner of four blocks (192, 384 in y; 192, 384, 576 in x) are one object
    corners = [(y, x) for y in (192, 384) for x in (192, 384, 576)]
    crossing = [in_memory[y, x] for y, x in corners if in_memory[y, x] > 0]
    assert crossing, "no object on a block corner in this image"
    for y, x in corners:
        if in_memory[y, x]:
            obj = in_memory == in_memory[y, x]
            assert len(np.unique(blocks[obj])) == 1 and blocks[y, x] > 0


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
    assert len(grid) == 3 * 2 and grid[0].context == (0, 230, 0, 230) and grid[-1].core == (400, 500, 200, 300)
    with pytest.raises(ValueError, match=r"\.zarr"):
        predict_big("run", tmp_path / "x.tif", tmp_path / "out.tif")
    with pytest.raises(FileNotFoundError, match="x.tif"):
        predict_big("run", tmp_path / "x.tif", tmp_path / "out.zarr")
