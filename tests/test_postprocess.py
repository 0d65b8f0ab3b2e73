import numpy as np
import pytest
import tifffile

import seed_reference
from conftest import random_labels
from unetflow.flows import masks_to_flows
from unetflow.metrics import matching
from unetflow.postprocess import (PostprocessConfig, boundary_to_labels, compute_masks, flow_errors,
                                  follow_flows, get_masks)
from test_flows import SEED_MASK

# End points after 200 steps printed in 000_e6f1c99ff19c11a5.txt (rows 0-4; rows 5-9 do not move).
SEED_P_Y = np.array([
    [0, 0, 1.0098284, 1.1413077, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1.0362048, 1, 1, 1, 1, 1, 1],
    [2, 2, 1.1182916, 1.1164871, 2, 2, 2, 2, 2, 2],
    [3, 3, 3, 3, 3, 3, 4.105441, 3.8231199, 4.041441, 4.0182114],
    [4, 4, 4, 4, 4, 4, 3.8856084, 3.9896855, 3.9375546, 3.935263]])
SEED_P_X = np.array([
    [0, 1, 2.8871436, 3.0260515, 4, 5, 6, 7, 8, 9],
    [0, 1, 2, 3.1274133, 4, 5, 6, 7, 8, 9],
    [0, 1, 2.811595, 3.157068, 4, 5, 6, 7, 8, 9],
    [0, 1, 2, 3, 4, 5, 7.9200172, 7.898424, 7.9439383, 7.9862995],
    [0, 1, 2, 3, 4, 5, 7.990998, 7.884873, 7.924165, 7.893717]])


def seed_inputs():
    flows = masks_to_flows(SEED_MASK)          # the seed passes unit flows ...
    cellprob = (SEED_MASK > 0).astype(np.float32)  # ... and the 0/1 cell probability
    return flows, cellprob


def test_seed_end_points_after_200_steps():
    flows, cellprob = seed_inputs()
    p = follow_flows(flows * (cellprob > 0) / 5.0, niter=200)
    np.testing.assert_allclose(p[0, :5], SEED_P_Y, atol=1e-4)
    np.testing.assert_allclose(p[1, :5], SEED_P_X, atol=1e-4)
    grid = np.mgrid[5:10, 0:10]
    np.testing.assert_array_equal(p[:, 5:], grid)


def test_seed_mask_recovered():
    flows, cellprob = seed_inputs()
    masks, diag = compute_masks(flows, cellprob, seed_threshold=2, min_size=1, flow_threshold=0,
                                return_diagnostics=True)
    np.testing.assert_array_equal(masks, SEED_MASK)
    np.testing.assert_array_equal(diag["seeds"], [[1, 2], [1, 3], [3, 7]])  # the seed's three seeds
    # with Cellpose's default seed threshold of 10 the tiny objects give no seeds
    assert compute_masks(flows, cellprob, min_size=1, flow_threshold=0).max() == 0


def _follow_bilinear_reference(dP, niter, mask):
    """Euler steps read by scipy's (bi/tri)linear interpolation, in float64: an independent reference."""
    from scipy.ndimage import map_coordinates
    pts = np.argwhere(mask).T.astype(np.float64)
    hi = np.array(dP.shape[1:])[:, None] - 1.0
    for _ in range(niter):
        step = np.stack([map_coordinates(dP[c].astype(np.float64), pts, order=1, mode="nearest")
                         for c in range(len(dP))])
        pts = np.clip(pts + step, 0, hi)
    return pts


def test_follow_flows_matches_seed_code_on_random_fields():
    rng = np.random.default_rng(1)
    for _ in range(3):
        labels = random_labels(rng, shape=(40, 44))
        dP = masks_to_flows(labels) * (labels > 0)
        np.testing.assert_allclose(follow_flows(dP, niter=50), seed_reference.follow_flows(dP, niter=50), atol=1e-4)


def test_bilinear_following_matches_an_independent_reference():
    rng = np.random.default_rng(5)
    for _ in range(3):
        labels = random_labels(rng, shape=(40, 44))
        dP = (masks_to_flows(labels) * (labels > 0)).astype(np.float32)
        mask = labels > 0
        p = follow_flows(dP, niter=50, interp=True, mask=mask)
        ref = _follow_bilinear_reference(dP, 50, mask)
        # float32 against float64 steps: end points agree to a thousandth of a pixel
        np.testing.assert_allclose(p[:, mask], ref, atol=1e-3)
        # and bilinear reading is not the truncated scheme
        assert np.abs(follow_flows(dP, niter=50, mask=mask)[:, mask] - ref).max() > 0.1


def test_trilinear_following_matches_an_independent_reference():
    rng = np.random.default_rng(6)
    labels = np.stack([random_labels(rng, shape=(18, 20)) for _ in range(3)]).repeat(4, axis=0)  # (12, 18, 20)
    dP = masks_to_flows(labels) * (labels > 0) / 2  # the 3-D flows sum two slice flows: steps under a pixel
    mask = labels > 0
    p = follow_flows(dP, niter=30, interp=True, mask=mask)
    ref = _follow_bilinear_reference(dP, 30, mask)
    np.testing.assert_allclose(p[:, mask], ref, atol=1e-3)
    assert np.abs(follow_flows(dP, niter=30, mask=mask)[:, mask] - ref).max() > 0.1


def test_get_masks_matches_seed_code():
    rng = np.random.default_rng(2)
    for _ in range(5):
        labels = random_labels(rng, shape=(60, 64), n=10)
        dP = masks_to_flows(labels)
        p = follow_flows(dP * (labels > 0), niter=200)
        ours = get_masks(p, labels > 0, seed_threshold=10)
        ref = seed_reference.get_masks(p, labels > 0, seed_threshold=10)
        np.testing.assert_array_equal(ours, ref)


def test_get_masks_matches_seed_code_on_clustered_end_points():
    # end points in tight clusters, many at the image border: peaks whose 5x5 window is clipped,
    # seeds that overwrite each other, pixels outside the cells counted at their own place
    rng = np.random.default_rng(5)
    for k in range(20):
        shape = (30 + k, 41)
        centres = rng.uniform(0, 1, (8, 2)) * (np.array(shape) - 1)
        centres[:3, k % 2] = 0  # on the border
        which = rng.integers(0, len(centres), shape)
        p = np.clip(np.moveaxis(centres[which], -1, 0) + rng.normal(0, 0.8, (2,) + shape),
                    0, np.array(shape)[:, None, None] - 1).astype(np.float32)
        iscell = rng.random(shape) < 0.8
        np.testing.assert_array_equal(get_masks(p, iscell, seed_threshold=4),
                                      seed_reference.get_masks(p, iscell, seed_threshold=4))


def _fill_holes_reference(masks, min_size):
    """Object by object with scipy, in id order (what unetflow did before its numba kernel)."""
    from scipy import ndimage

    out = np.zeros_like(masks)
    j = 0
    for i, slc in enumerate(ndimage.find_objects(masks)):
        if slc is not None and (msk := masks[slc] == i + 1).sum() >= max(min_size, 1):
            j += 1
            out[slc][ndimage.binary_fill_holes(msk)] = j
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_fill_holes_matches_scipy_with_nested_objects(ndim):
    from unetflow.postprocess import fill_holes_and_remove_small_masks

    rng = np.random.default_rng(ndim)
    shape = (40, 50) if ndim == 2 else (12, 16, 18)
    grid = np.indices(shape)
    for _ in range(60):
        masks = np.zeros(shape, np.int32)
        for _ in range(rng.integers(1, 12)):  # discs and rings (holes), later ones over earlier ones
            dist = np.sqrt(sum((g - rng.integers(0, s)) ** 2 for g, s in zip(grid, shape)))
            r = rng.integers(2, 9)
            shape_mask = (dist < r) & (dist >= r - rng.integers(1, 3)) if rng.random() < 0.5 else dist < r
            masks[shape_mask] = rng.integers(1, 40)
        min_size = int(rng.integers(0, 30))
        np.testing.assert_array_equal(fill_holes_and_remove_small_masks(masks, min_size),
                                      _fill_holes_reference(masks, min_size))


def test_round_trip_synthetic_touching_objects():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    labels = np.zeros((96, 96), np.int32)
    k = 0
    for cy in range(12, 90, 22):  # a lattice of touching discs
        for cx in range(12, 90, 22):
            k += 1
            r = rng.uniform(10, 13)
            labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k
    dP = 5 * masks_to_flows(labels)
    cellprob = np.where(labels > 0, 10.0, -10.0)
    masks = compute_masks(dP, cellprob)
    m = matching(labels, masks, [0.5, 0.9])
    assert m[0].ap == 1.0 and m[1].ap >= 0.9


def test_round_trip_real_dsb(dsb_label_files):
    true_list, pred_list = [], []
    for f in dsb_label_files:
        labels = tifffile.imread(f).astype(np.int32)
        dP = 5 * masks_to_flows(labels)
        masks = compute_masks(dP, np.where(labels > 0, 10.0, -10.0))
        true_list.append(labels)
        pred_list.append(masks)
    from unetflow.metrics import matching_dataset
    m50, m90 = matching_dataset(true_list, pred_list, [0.5, 0.9])
    assert m50.ap >= 0.95, m50
    assert m90.ap >= 0.8, m90


def test_flow_error_check_removes_inconsistent_masks():
    labels = np.zeros((40, 40), np.int32)
    labels[5:20, 5:20] = 1
    labels[22:36, 22:36] = 2
    dP = 5 * masks_to_flows(labels)
    # object 2's pixels all flow to its corner (23, 23): they gather into one mask, but a mask's
    # own flows point to its centre, so its flow error is large
    yy, xx = np.mgrid[:40, :40]
    towards = np.stack([23.0 - yy, 23.0 - xx])
    towards /= np.sqrt((towards ** 2).sum(0)) + 1e-9
    dP[:, labels == 2] = 5 * towards[:, labels == 2]
    errors = flow_errors(labels, dP)
    assert errors[0] < 1e-6 and errors[1] > 1
    cellprob = np.where(labels > 0, 10.0, -10.0)
    for mode in ({}, {"follow": "cellprob", "interp": True}):
        unchecked = compute_masks(dP, cellprob, flow_threshold=0, **mode)
        assert (unchecked[22:36, 22:36] > 0).mean() > 0.9, mode   # without the check, a mask forms there
        masks, diag = compute_masks(dP, cellprob, return_diagnostics=True, **mode)
        assert (masks[22:36, 22:36] == 0).all() and masks[12, 12] > 0, mode  # the check removes it alone
        assert len(diag["removed_by_flow_check"]) == 1 and diag["flow_errors"].max() > 0.4


def test_min_size_and_holes():
    labels = np.zeros((40, 40), np.int32)
    labels[5:25, 5:25] = 1
    labels[30:33, 30:33] = 2  # 9 px: under min_size
    dP = 5 * masks_to_flows(labels)
    cellprob = np.where(labels > 0, 10.0, -10.0)
    cellprob[12:16, 13:17] = -10.0  # a hole in object 1: below the threshold, filled back
    masks = compute_masks(dP, cellprob, flow_threshold=None)
    assert masks.max() == 1 and masks[31, 31] == 0  # object 2 is under min_size
    assert np.all(masks[12:16, 13:17] == 1) and np.count_nonzero(masks == 1) == 400
    kept = compute_masks(dP, cellprob, flow_threshold=None, min_size=5, seed_threshold=2)  # 9 px seed it
    assert kept.max() == 2 and 5 <= np.count_nonzero(kept[30:33, 30:33] == 2) == np.count_nonzero(kept == 2)


def test_compute_masks_bad_input():
    dP = np.zeros((2, 10, 10))
    with pytest.raises(ValueError, match="cellprob.*shape"):
        compute_masks(dP, np.zeros((10, 11)))
    with pytest.raises(ValueError, match="dP.*\\(2, H, W\\)"):
        compute_masks(np.zeros((3, 10, 10)), np.zeros((10, 10)))
    with pytest.raises(ValueError, match="dP.*channels-last"):
        compute_masks(np.zeros((10, 10, 2)), np.zeros((10, 10)))
    bad = dP.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_masks(bad, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="unknown post-processing option"):
        compute_masks(dP, np.zeros((10, 10)), cellprob_treshold=0.5)
    assert compute_masks(dP, np.full((10, 10), -5.0)).max() == 0  # nothing above threshold


def test_config_object_and_overrides():
    cfg = PostprocessConfig(min_size=1, flow_threshold=0, seed_threshold=2)
    flows, cellprob = seed_inputs()
    np.testing.assert_array_equal(compute_masks(flows, cellprob, cfg), SEED_MASK)
    assert cfg.with_overrides(niter=10).niter == 10 and cfg.niter == 200


def test_3d_round_trip():
    zz, yy, xx = np.mgrid[:16, :24, :24]
    labels = np.zeros((16, 24, 24), np.int32)
    labels[(zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2 <= 36] = 1
    labels[(zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 36] = 2
    dP = 5 * masks_to_flows(labels)
    masks = compute_masks(dP, np.where(labels > 0, 10.0, -10.0), flow_threshold=None)
    assert matching(labels, masks, 0.5).tp == 2


def boundary_probs(labels):
    from unetflow.boundary import labels_to_boundary_classes
    classes = labels_to_boundary_classes(labels)
    return np.eye(3)[classes]


@pytest.mark.parametrize("method", ["dilate", "watershed"])
def test_boundary_to_labels_recovers_touching_objects(method):
    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 20) ** 2 + (xx - 18) ** 2 <= 100] = 1
    labels[((yy - 20) ** 2 + (xx - 38) ** 2 <= 100) & (labels == 0)] = 2
    labels[5:9, 50:54] = 3  # 16 px object: its interior (4 px) is under min_size
    out = boundary_to_labels(boundary_probs(labels), method=method)
    m = matching(labels, out, 0.7)
    assert m.tp == 2 and m.fp == 0


def test_boundary_to_labels_bad_input():
    with pytest.raises(ValueError, match="probs.*\\(H, W, 3\\)"):
        boundary_to_labels(np.zeros((10, 10, 2)))
    with pytest.raises(ValueError, match="method"):
        boundary_to_labels(np.zeros((10, 10, 3)), method="magic")
