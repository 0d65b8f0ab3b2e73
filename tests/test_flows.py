import zlib

import numpy as np
import pytest

import seed_reference
from conftest import random_labels
from unetflow.flows import _gradients_2d, diameters, flows_to_rgb, masks_to_flows

# The two-object 10x10 example of 000_e6f1c99ff19c11a5.txt and the flows printed there.
SEED_MASK = np.zeros((10, 10), np.int32)
SEED_MASK[0:3, 2:4] = 1
SEED_MASK[3:5, 6:10] = 2
SEED_DY = {(0, 2): 0.7728456, (0, 3): 0.7343627, (1, 2): 0.0, (1, 3): -0.07701479, (2, 2): -0.8023549,
           (2, 3): -0.7343627, (3, 6): 0.6282049, (3, 7): 0.9970669, (3, 8): 0.72136474, (3, 9): 0.26260668,
           (4, 6): -0.67413443, (4, 7): -0.99975467, (4, 8): -0.80442435, (4, 9): -0.29906148}
SEED_DX = {(0, 2): 0.6345941, (0, 3): -0.67875725, (1, 2): 1.0, (1, 3): -0.99702996, (2, 2): 0.59684724,
           (2, 3): -0.67875725, (3, 6): 0.778048, (3, 7): 0.07653494, (3, 8): -0.69255537, (3, 9): -0.96490294,
           (4, 6): 0.73860866, (4, 7): -0.0221485, (4, 8): -0.5940551, (4, 9): -0.9542338}


def test_seed_example_flows():
    flows = masks_to_flows(SEED_MASK)
    assert flows.shape == (2, 10, 10) and flows.dtype == np.float32
    expected = np.zeros((2, 10, 10), np.float32)
    for (y, x), v in SEED_DY.items():
        expected[0, y, x] = v
    for (y, x), v in SEED_DX.items():
        expected[1, y, x] = v
    np.testing.assert_allclose(flows, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["touching", "rect", "holes", "pixels"])
def test_agrees_with_seed_code_on_random_labels(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))  # not hash(): it changes with every interpreter
    for _ in range(15):
        labels = random_labels(rng, kind=kind)
        ours = masks_to_flows(labels)
        ref = seed_reference.masks_to_flows(labels)[0]
        # A unit vector has a direction only where the raw gradient stands above rounding.  Where
        # it is a difference of two nearly equal numbers (~1e-16, e.g. on a symmetry axis), its
        # direction is rounding noise that the seed's 1e-20 guard blows up to unit length, and
        # its last bits depend on the CPU's log and vector code (AVX2 vs AVX-512 differ).  There
        # the raw gradients are compared instead; elsewhere the tolerance is the seed's 1e-6.
        raw = seed_reference.masks_to_flows(labels, normalize=False)[0]
        defined = np.sqrt((raw ** 2).sum(0)) > 1e-9
        np.testing.assert_allclose(ours[:, defined], ref[:, defined], atol=1e-6, rtol=0)
        ours_raw = _gradients_2d(labels.astype(np.int32), normalize=False)
        np.testing.assert_allclose(ours_raw, raw, atol=1e-12, rtol=0)
        assert np.all(ours[:, labels == 0] == 0)
        norms = np.sqrt((ours ** 2).sum(0))[labels > 0]
        # unit vectors, except where the seed's gradient vanishes (~1e-20 against its 1e-20 guard)
        assert np.all(norms <= 1 + 1e-5) and np.mean(np.abs(norms - 1) < 1e-5) > 0.9


def test_agrees_with_seed_code_in_3d():
    rng = np.random.default_rng(3)
    vol = np.zeros((6, 20, 22), np.int32)
    for z in range(6):
        vol[z] = random_labels(rng, shape=(20, 22), n=4)
    vol[2:5, 5:12, 5:12] = 77
    ours = masks_to_flows(vol)
    ref = seed_reference.masks_to_flows(vol)[0]
    assert ours.shape == (3, 6, 20, 22)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_dsb_labels_agree_with_seed_code(dsb_label_files):
    import tifffile
    for f in dsb_label_files[:5]:
        labels = tifffile.imread(f).astype(np.int32)
        np.testing.assert_allclose(masks_to_flows(labels), seed_reference.masks_to_flows(labels)[0], atol=1e-6)


def test_empty_and_full_labels():
    assert np.all(masks_to_flows(np.zeros((5, 7), np.int32)) == 0)
    full = masks_to_flows(np.ones((9, 9), np.int32))
    np.testing.assert_allclose(full, seed_reference.masks_to_flows(np.ones((9, 9), np.int32))[0], atol=1e-6)


def test_input_is_not_modified_and_any_integer_type_works():
    labels = SEED_MASK.astype(np.uint16)
    before = labels.copy()
    np.testing.assert_allclose(masks_to_flows(labels), masks_to_flows(SEED_MASK))
    assert np.array_equal(labels, before)
    np.testing.assert_allclose(masks_to_flows(SEED_MASK.astype(np.uint32) * 70000), masks_to_flows(SEED_MASK * 70000))


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((1, 10, 10), np.int32), "singleton"),
    (np.zeros((10,), np.int32), "dimensions"),
    (SEED_MASK > 0, "boolean"),
    (SEED_MASK - 1, "negative"),
    (SEED_MASK + 0.5, "non-integer"),
])
def test_bad_labels_raise_naming_the_argument(bad, msg):
    with pytest.raises(ValueError, match=msg) as info:
        masks_to_flows(bad)
    assert "`masks`" in str(info.value)


def test_diameters_as_seed():
    labels = np.zeros((30, 30), np.int32)
    labels[0:4, 0:4] = 1       # 16 px
    labels[10:15, 10:15] = 3   # 25 px
    labels[20:26, 20:26] = 4   # 36 px
    _, counts = np.unique(labels, return_counts=True)
    expected = np.median(counts[1:] ** 0.5) / (np.pi ** 0.5 / 2)  # the seed's formula
    assert diameters(labels) == pytest.approx(expected)
    assert diameters(np.zeros((4, 4), np.int32)) == 0.0


def test_flows_to_rgb_colour_wheel():
    flows = masks_to_flows(SEED_MASK)
    rgb = flows_to_rgb(flows)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[SEED_MASK == 0] == 0)
    # opposite directions get different colours
    right = flows_to_rgb(np.stack([np.zeros((4, 4)), np.ones((4, 4))]))
    left = flows_to_rgb(np.stack([np.zeros((4, 4)), -np.ones((4, 4))]))
    assert np.abs(right.astype(int) - left.astype(int)).max() > 100
    with pytest.raises(ValueError, match="flows"):
        flows_to_rgb(np.zeros((10, 10, 2)))


@pytest.mark.parametrize("shape", [(37, 41), (6, 9, 11), (1, 5), (5, 1)])
def test_bounding_boxes_are_find_objects(shape):
    from scipy import ndimage

    from unetflow.flows import bounding_boxes

    rng = np.random.default_rng(len(shape))
    labels = (rng.integers(0, 9, shape) * (rng.random(shape) < 0.2)).astype(np.int32)
    labels[labels == 4] = 0  # an absent id
    lo, hi = bounding_boxes(labels)
    slices = ndimage.find_objects(labels)
    assert len(lo) == len(slices)
    for i, slc in enumerate(slices):
        if slc is None:
            assert lo[i, 0] == -1
        else:
            assert [(s.start, s.stop) for s in slc] == list(zip(lo[i], hi[i]))
