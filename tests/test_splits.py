"""Grouped splits: tiles of one image and series of one experiment never straddle two splits."""
import numpy as np
import pandas as pd
from scipy import ndimage

from conftest import REPO
from unetflow.manifest import SPLITS
from unetflow.splits import assign_splits, group_images, grouped_manifest, tile_neighbours


def _field(seed, shape=(128, 160)):
    """A smooth textured 8-bit 'micrograph' (blurred noise plus blobs)."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 3.0) + 0.5 * ndimage.gaussian_filter(rng.random(shape), 10.0)
    img = (img - img.min()) / (img.max() - img.min())
    return (20 + 215 * img).astype(np.uint8)


def _mosaic_tiles(seed):
    big = _field(seed)
    return [big[:64, :80], big[:64, 80:], big[64:, :80], big[64:, 80:]]


def test_tiles_cut_from_one_image_are_found_and_grouped():
    tiles_a, tiles_b = _mosaic_tiles(1), _mosaic_tiles(2)
    order = [2, 5, 0, 7, 1, 4, 6, 3]                 # shuffled, the two mosaics interleaved
    images = [(tiles_a + tiles_b)[k] for k in order]
    source = [k // 4 for k in order]                 # which mosaic each image came from
    pairs = tile_neighbours(images)
    # every true left-right and top-bottom neighbour is found, and nothing else
    where = {k: i for i, k in enumerate(order)}
    expected = set()
    for base in (0, 4):
        expected |= {(where[base], where[base + 1], "x"), (where[base + 2], where[base + 3], "x"),
                     (where[base], where[base + 2], "y"), (where[base + 1], where[base + 3], "y")}
    assert {(i, j, side) for i, j, side, _ in pairs} == expected
    groups, _ = group_images(images, ["s"] * len(images), threshold=0)
    for i in range(len(images)):
        for j in range(len(images)):
            assert (groups[i] == groups[j]) == (source[i] == source[j])


def test_flat_borders_link_nothing():
    black = [np.zeros((32, 32), np.uint8) for _ in range(4)]
    assert tile_neighbours(black) == []


def test_series_with_one_look_are_grouped():
    rng = np.random.default_rng(0)
    # two acquisition series: dim and bright; within a series the images differ only by noise
    dim = [(rng.random((40, 40)) * 40).astype(np.uint8) for _ in range(5)]
    bright = [(100 + rng.random((40, 40)) * 150).astype(np.uint8) for _ in range(5)]
    groups, _ = group_images(dim + bright, ["s"] * 10, threshold=0.5)
    assert len(set(groups[:5])) == 1 and len(set(groups[5:])) == 1 and groups[0] != groups[5]


def test_assign_splits_keeps_groups_whole_and_reaches_every_split():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), rng.integers(1, 8, 60))
    strata = np.where(groups < 40, "fluorescence", "stained")
    split = assign_splits(groups, strata, seed=3)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    for s in np.unique(strata):
        counts = pd.Series(split[strata == s]).value_counts(normalize=True)
        assert set(counts.index) == set(SPLITS)
        assert 0.6 <= counts["train"] <= 0.9
    # a series larger than a val/test share always trains
    groups = np.array([0] * 50 + list(range(1, 21)))
    split = assign_splits(groups, ["a"] * len(groups))
    assert set(split[:50]) == {"train"}


def test_grouped_manifest_keeps_the_old_split():
    images = _mosaic_tiles(3) + _mosaic_tiles(4) + _mosaic_tiles(5)
    table = pd.DataFrame({"image": [f"i{k}" for k in range(12)], "label": [f"l{k}" for k in range(12)],
                          "split": ["train"] * 10 + ["val", "test"]})
    out, pairs = grouped_manifest(table, images, threshold=0)
    assert list(out["split_by_image"]) == list(table["split"])
    assert out["group"].nunique() == 3 and len(pairs) == 12
    assert out.groupby("group")["split"].nunique().max() == 1
    assert set(out["split"]) == set(SPLITS)


def test_shipped_manifest_is_split_by_group():
    table = pd.read_csv(REPO / "data_manifest.csv")
    assert {"group", "split_by_image"} <= set(table.columns)
    assert table.groupby("group")["split"].nunique().max() == 1
    for modality, rows in table.groupby("modality"):
        assert {"val", "test"} <= set(rows["split"]), modality
    fractions = table["split"].value_counts(normalize=True)
    assert 0.72 <= fractions["train"] <= 0.85 and fractions["val"] >= 0.07 and fractions["test"] >= 0.07


def test_dsb_tiles_found_are_real_neighbours(dsb_root):
    """On real DSB images: the tile pairs put in one group continue each other across the border."""
    import tifffile
    table = pd.read_csv(REPO / "data_manifest.csv")
    rows = table[(table["height"] == 256) & (table["width"] == 320)].reset_index(drop=True)
    images = [tifffile.imread(dsb_root / p) for p in rows["image"]]
    pairs = tile_neighbours(images, rows["modality"])
    assert len(pairs) >= 40
    for i, j, side, _ in pairs:
        assert rows["group"][i] == rows["group"][j]
    # the step across a found border is like a step inside an image, unlike random pairs
    grey = [im.astype(float).mean(-1) if im.ndim == 3 else im.astype(float) for im in images]
    i, j, side, ratio = next(p for p in pairs if p[2] == "x")
    inside = np.abs(grey[i][:, -1] - grey[i][:, -2]).mean()
    assert np.abs(grey[i][:, -1] - grey[j][:, 0]).mean() <= 1.5 * inside
    others = [np.abs(grey[i][:, -1] - grey[k][:, 0]).mean() for k in range(len(grey)) if k not in (i, j)]
    assert np.median(others) > 3 * inside

