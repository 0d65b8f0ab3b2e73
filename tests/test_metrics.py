import itertools

import numpy as np
import pytest

from conftest import random_labels
from unetflow.metrics import (average_precision, error_categories, matching, matching_dataset,
                              overlap_table, per_image_table)


def blocks():
    t = np.zeros((20, 20), np.int32)
    t[0:10, 0:10] = 1
    t[0:10, 10:20] = 2
    t[12:20, 0:8] = 3
    return t


def test_perfect_and_relabelled():
    t = blocks()
    m = matching(t, t * 7)
    assert (m.tp, m.fp, m.fn, m.ap, m.f1, m.precision, m.recall) == (3, 0, 0, 1.0, 1.0, 1.0, 1.0)
    assert m.mean_matched_iou == 1.0 and m.panoptic_quality == 1.0


def test_merge_counts():
    t = blocks()
    p = t.copy()
    p[p == 2] = 1  # objects 1 and 2 merged
    m = matching(t, p, 0.5)
    # the merged prediction (200 px) has IoU 0.5 with each 100 px object: >= 0.5 matches one of them
    assert (m.tp, m.fp, m.fn) == (2, 0, 1)
    e = error_categories(t, p)
    assert e["merges"] == 1 and e["splits"] == 0 and e["missed"] == 2 and e["extra"] == 1


def test_split_counts():
    t = blocks()
    p = t.copy()
    p[0:10, 5:10] = 9  # object 1 split into two halves
    e = error_categories(t, p)
    assert e["splits"] == 1 and e["merges"] == 0
    m = matching(t, p, 0.5)
    assert (m.tp, m.fp, m.fn) == (3, 1, 0)  # each half has IoU 0.5 with object 1
    m = matching(t, p, 0.55)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)


def test_missed_size_bins():
    t = np.zeros((120, 120), np.int32)
    t[0:10, 0:10] = 1       # 100 px -> bin 0-250
    t[20:40, 20:40] = 2     # 400 px -> bin 250-625
    t[50:80, 50:80] = 3     # 900 px -> bin 900-10000
    e = error_categories(t, np.zeros_like(t))
    assert e["missed"] == 3 and e["missed_0-250"] == 1 and e["missed_250-625"] == 1
    assert e["missed_625-900"] == 0 and e["missed_900-10000"] == 1 and e["missed_10000+"] == 0


def test_empty_images_defined():
    z = np.zeros((8, 8), np.int32)
    m = matching(z, z)
    assert (m.tp, m.fp, m.fn, m.ap, m.f1) == (0, 0, 0, 1.0, 1.0)
    m = matching(blocks(), np.zeros((20, 20), np.int32))
    assert (m.fn, m.ap, m.precision, m.recall, m.mean_matched_iou) == (3, 0.0, 0.0, 0.0, 0.0)
    m = matching(np.zeros((20, 20), np.int32), blocks())
    assert (m.fp, m.ap, m.precision) == (3, 0.0, 0.0)
    assert error_categories(z, z)["merges"] == 0


def brute_force_tp(t, p, thresh):
    """Largest number of one-to-one pairs with IoU >= thresh, by trying every assignment."""
    ti = [i for i in np.unique(t) if i]
    pi = [j for j in np.unique(p) if j]
    iou = np.zeros((len(ti), len(pi)))
    for a, i in enumerate(ti):
        for b, j in enumerate(pi):
            inter = np.sum((t == i) & (p == j))
            iou[a, b] = inter / (np.sum(t == i) + np.sum(p == j) - inter)
    best = 0
    small, large = (ti, pi) if len(ti) <= len(pi) else (pi, ti)
    ok = iou >= thresh if len(ti) <= len(pi) else (iou >= thresh).T
    for perm in itertools.permutations(range(len(large)), len(small)):
        best = max(best, sum(ok[a, b] for a, b in enumerate(perm)))
    return best


@pytest.mark.parametrize("thresh", [0.1, 0.3, 0.5, 0.7])
def test_agrees_with_brute_force(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    for _ in range(8):
        t = random_labels(rng, shape=(24, 24), n=5)
        p = random_labels(rng, shape=(24, 24), n=5)
        p = np.where(rng.random() < 0.5, p, np.roll(t, rng.integers(-3, 4), axis=1))
        assert matching(t, p, thresh).tp == brute_force_tp(t, p, thresh)


def test_thresholds_list_dataset_and_table():
    t = blocks()
    p = t.copy()
    p[0:10, 0:3] = 0  # object 1 IoU 0.7
    res = matching(t, p, [0.5, 0.7, 0.75])
    assert [r.tp for r in res] == [3, 3, 2]
    ap = average_precision(t, p, [0.5, 0.75])
    np.testing.assert_allclose(ap, [1.0, 0.5])
    ds = matching_dataset([t, t], [p, np.zeros_like(t)], [0.5])[0]
    assert (ds.n_true, ds.tp, ds.fn, ds.fp) == (6, 3, 3, 0)
    table = per_image_table([t, t], [p, np.zeros_like(t)], names=["a", "b"])
    assert len(table) == 20 and set(table["image"]) == {"a", "b"}
    assert {"ap", "f1", "merges", "missed_0-250"} <= set(table.columns)


def test_sparse_overlaps_many_objects():
    """The sparse table holds every overlapping pair with its IoU, as a dense count gives it."""
    rng = np.random.default_rng(0)
    t = np.repeat(np.repeat(rng.permutation(1200).reshape(30, 40) + 1, 7, 0), 5, 1)  # 1200 blocks of 7 x 5
    p = rng.permutation(1201)[np.roll(t, (3, 2), axis=(0, 1))]  # shifted, ids shuffled (0 -> somewhere)
    p[p == p[0, 0]] = 0
    ov = overlap_table(t, p)
    tc, pc = t, np.unique(p, return_inverse=True)[1].reshape(p.shape)  # ids 1..N in order, as the table's
    inter = np.zeros((tc.max() + 1, pc.max() + 1))
    np.add.at(inter, (tc, pc), 1)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    ti, pi = np.nonzero(inter[1:, 1:])
    assert ov.n_true == 1200 and len(ov.iou) == len(ti) > 1200  # each block meets up to 4 shifted ones
    dense = dict(zip(zip(ti + 1, pi + 1), (inter / union)[ti + 1, pi + 1]))
    assert all(dense[k] == pytest.approx(v) for k, v in zip(zip(ov.true_ids, ov.pred_ids), ov.iou))


def test_bad_inputs():
    with pytest.raises(ValueError, match="y_pred.*shape"):
        matching(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        matching(-np.ones((4, 4), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="non-integer"):
        matching(np.full((4, 4), 0.5), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="thresholds"):
        matching(np.zeros((4, 4), int), np.zeros((4, 4), int), 1.5)
