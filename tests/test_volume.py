"""Volumes with a 2-D network: the three views combined, slices stitched, resampling, and the ready
model on synthetic 3-D nuclei."""
from pathlib import Path

import numpy as np
import pytest

from unetflow.volume import _resize_labels, _zoom, combine_views, stitch_slices

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gonuclear_mini"


def test_combine_views_by_hand():
    """Each view's outputs, built by slicing known 3-D fields the way predict_volume slices the
    volume, give back each component as the mean of the two views that see it."""
    rng = np.random.default_rng(0)
    Z, Y, X = 3, 4, 5
    dz, dy, dx, cp = (rng.normal(size=(Z, Y, X)).astype(np.float32) for _ in range(4))
    # the views see the same field, each with an error of its own that the mean halves
    e = [rng.normal(size=(Z, Y, X)).astype(np.float32) for _ in range(6)]
    yx = np.stack([dy + e[0], dx + e[1], cp + 1], -1)                       # volume[z]: (Y, X)
    zy = np.stack([np.stack([(dz + e[2])[:, :, x], (dy - e[0])[:, :, x], cp[:, :, x]], -1)
                   for x in range(X)])                                          # volume[:, :, x]: (Z, Y)
    zx = np.stack([np.stack([(dz - e[2])[:, y], (dx - e[1])[:, y], (cp - 1)[:, y]], -1)
                   for y in range(Y)])                                          # volume[:, y]: (Z, X)
    dP, cellprob = combine_views(yx, zy, zx)
    assert dP.shape == (3, Z, Y, X) and cellprob.shape == (Z, Y, X)
    for got, want in zip(dP, (dz, dy, dx)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(cellprob, cp, atol=1e-6)


def test_round_trip_through_the_three_views():
    """3-D flows of touching blobs, sliced into the views a perfect 2-D network would give per
    component, combined and followed in 3-D, give the blobs back."""
    from unetflow.dynamics import compute_masks
    from unetflow.flows import masks_to_flows
    from unetflow.metrics import matching

    labels = _blobs((24, 40, 40), [(12, 12, 14), (12, 22, 24), (12, 30, 10)], radius=7)
    mu = masks_to_flows(labels)  # (3, Z, Y, X) unit flows
    logit = np.where(labels > 0, 8.0, -8.0).astype(np.float32)
    yx = np.stack([mu[1], mu[2], logit], -1) * [5, 5, 1]
    zy = np.moveaxis(np.stack([mu[0], mu[1], logit], -1) * [5, 5, 1], 2, 0)
    zx = np.moveaxis(np.stack([mu[0], mu[2], logit], -1) * [5, 5, 1], 1, 0)
    dP, cellprob = combine_views(yx, zy, zx)
    masks = compute_masks(dP, cellprob, flow_threshold=0.0, min_size=15)
    assert matching(labels, masks, 0.9).ap == 1.0


def test_stitching_joins_overlaps_and_copes_with_empty_slices():
    masks = np.zeros((6, 10, 10), np.int32)
    masks[0, 1:4, 1:4] = 1
    masks[1, 1:4, 1:5] = 7                     # same object, another 2-D id
    masks[1, 6:9, 6:9] = 2                     # a new object
    masks[2, 6:9, 6:9] = 1                     # continues the second one
    # slice 3 is empty: every object ends there
    masks[4, 1:4, 1:4] = 3                     # same place as the first, but after the gap: new
    masks[5, 1:4, 1:4] = 1
    masks[5, 5:6, 5:6] = 2                     # overlaps nothing above: new
    out = stitch_slices(masks, 0.25)
    assert out[0, 2, 2] == out[1, 2, 2] == 1
    assert out[1, 7, 7] == out[2, 7, 7] == 2
    assert out[4, 2, 2] == out[5, 2, 2] == 3 and out[5, 5, 5] == 4
    assert not out[3].any() and out.max() == 4
    # an IoU under the threshold does not join
    low = np.zeros((2, 10, 10), np.int32)
    low[0, 0:4, 0:4] = 1
    low[1, 3:7, 3:7] = 1
    assert stitch_slices(low, 0.25).max() == 2 and stitch_slices(low, 0.0).max() == 1


def test_anisotropic_resampling_keeps_ids_and_shapes():
    labels = _blobs((10, 30, 30), [(5, 8, 8), (5, 20, 20)], radius=4)
    up = _zoom(labels, (2.2, 1.0, 1.0), order=0)
    assert up.shape == (22, 30, 30) and set(np.unique(up)) == set(np.unique(labels))
    back = _resize_labels(up, labels.shape)
    assert back.shape == labels.shape and set(np.unique(back)) == set(np.unique(labels))
    assert np.mean(back == labels) > 0.97


def _blobs(shape, centres, radius):
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (z, y, x) in enumerate(centres, 1):
        labels[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = i
    return labels


def _volume_manifest(root, splits, shape, n_blobs, lo, hi, radius):
    """One synthetic annotated volume per split: `n_blobs` bright spheres centred between `lo` and
    `hi` in an isotropic `shape`, sampled every second z (voxel size 0.5 x 0.25 x 0.25: anisotropy
    2), with a manifest.csv listing them."""
    from unetflow.io import write_volume_labels

    rng = np.random.default_rng(0)
    rows = ["image,label,split"]
    for i, split in enumerate(splits):
        centres = [(int(z), int(y), int(x)) for z, y, x in rng.integers(lo, hi, size=(n_blobs, 3))]
        labels = _blobs(shape, centres, radius=radius)[::2]
        volume = np.where(labels > 0, 200, 20) + rng.integers(0, 10, labels.shape)
        for kind, arr in (("images", volume.astype(np.uint16)), ("labels", labels.astype(np.uint16))):
            write_volume_labels(root / kind / f"v{i}.tif", arr, (0.5, 0.25, 0.25))
        rows.append(f"images/v{i}.tif,labels/v{i}.tif,{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["3d", "stitch"])
def test_ready_model_segments_separated_and_touching_blobs(mode):
    """The ready `nuclei` model (2-D) on a synthetic anisotropic stack of bright spheres, two of them
    touching, at 17 px across (its training size): each path finds every sphere."""
    from unetflow.metrics import matching
    from unetflow.volume import predict_volume

    iso = _blobs((44, 64, 64), [(22, 14, 14), (22, 44, 16), (22, 30, 44), (22, 46, 44)], radius=8)
    truth = iso[::2]  # z sampled every second voxel: anisotropy 2
    rng = np.random.default_rng(0)
    volume = np.where(truth > 0, 200.0, 20.0) + rng.normal(0, 5, truth.shape)
    labels, info = predict_volume("nuclei", volume, anisotropy=2.0, diameter=17, mode=mode)
    assert labels.shape == truth.shape and info["anisotropy"] == 2.0
    m = matching(truth, labels, 0.5)
    assert m.tp == 4 and m.fp == 0, m


@pytest.mark.slow
def test_volume_errors():
    from unetflow.volume import predict_volume
    with pytest.raises(ValueError, match="`mode` must be one of"):
        predict_volume("nuclei", np.zeros((4, 32, 32)), mode="2d")
    with pytest.raises(ValueError, match="`anisotropy` must be a positive number"):
        predict_volume("nuclei", np.zeros((4, 32, 32)), anisotropy=0)
    with pytest.raises(ValueError, match="must be \\(Z, Y, X\\)"):
        predict_volume("nuclei", np.zeros((32, 32)))
    # objects of 2 px for a model trained at 17 px: a 600-fold larger volume is refused, not attempted
    with pytest.raises(ValueError, match="would zoom the volume 8.5x"):
        predict_volume("nuclei", np.zeros((4, 32, 32)), diameter=2)


@pytest.mark.slow
def test_predict_cli_on_a_stack_keeps_the_voxel_size(tmp_path, capsys):
    """``unetflow predict --model nuclei STACK --3d``: the anisotropy read from the file, the labels
    written as a TIFF stack and an OME-Zarr label image with the same voxel size; a 2-D image among
    the stacks is reported and the others go on; 2-D formats are refused."""
    from unetflow.cli import main
    from unetflow.io import read_volume, write_image, write_volume_labels
    from unetflow.metrics import matching

    iso = _blobs((44, 64, 64), [(22, 14, 14), (22, 44, 16), (22, 30, 44)], radius=8)
    truth = iso[::2]
    volume = np.where(truth > 0, 200, 20).astype(np.uint16)
    write_volume_labels(tmp_path / "stack.tif", volume, (0.5, 0.25, 0.25))  # an ImageJ stack, anisotropy 2
    write_image(tmp_path / "flat.tif", np.zeros((32, 32), np.uint16))
    code = main(["predict", "--model", "nuclei", str(tmp_path / "stack.tif"), str(tmp_path / "flat.tif"),
                 "--3d", "--diameter", "17", "--out", str(tmp_path / "out"), "--formats", "labels", "ome-zarr"])
    captured = capsys.readouterr()
    assert code == 1 and "flat.tif" in captured.err and "(Z, Y, X)" in captured.err
    assert "anisotropy 2.00" in captured.out
    labels, voxel = read_volume(tmp_path / "out" / "stack_labels.tif")
    assert voxel == pytest.approx((0.5, 0.25, 0.25)) and labels.shape == truth.shape
    assert matching(truth, labels.astype(np.int32), 0.5).tp == 3
    import zarr
    zarr_labels = zarr.open_group(str(tmp_path / "out" / "stack.ome.zarr"), mode="r")
    np.testing.assert_array_equal(zarr_labels["0"][:], labels)
    scale = zarr_labels.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.5, 0.25, 0.25])
    assert main(["predict", "--model", "nuclei", str(tmp_path / "stack.tif"), "--3d", "--formats", "rois",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--formats rois: 2-D formats" in capsys.readouterr().err
    assert main(["predict", "--model", "nuclei", str(tmp_path / "stack.tif"), "--3d", "--anisotropy", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--anisotropy must be a positive number" in capsys.readouterr().err


def test_volume_slices_are_isotropic_and_hold_objects():
    from unetflow.volume import volume_slices

    labels = _blobs((10, 24, 30), [(5, 12, 10)], radius=3)
    volume = (labels > 0).astype(np.float32)
    slices = list(volume_slices(volume, labels, anisotropy=2.0))
    shapes = {s[0].shape for s in slices}
    assert shapes == {(24, 30), (20, 30), (20, 24)}  # YX; ZX and ZY with z doubled
    assert all(lab.any() and img.shape == lab.shape for img, lab in slices)
    # every slice crossing the blob, no empty one: 2 x 7 in z (resampled), 7 in y, 7 in x
    assert len(slices) == 14 + 7 + 7


@pytest.mark.slow
def test_a_2d_model_trains_on_the_slices_of_volumes(tmp_path):
    """``data.volume_slices``: a manifest of volumes trains the 2-D network on their slices; the run
    then segments a volume in 3-D."""
    from unetflow.config import load_config
    from unetflow.rundir import read_run
    from unetflow.train import run_experiment
    from unetflow.volume import predict_volume

    _volume_manifest(tmp_path / "data", ["train", "train", "val"], (20, 64, 64), 5, [6, 10, 10], [14, 54, 54], 6)
    config = load_config(Path(__file__).resolve().parent.parent / "experiments" / "tiny_flow.yaml", [
        "data.manifest=" + str(tmp_path / "data" / "manifest.csv"), "data.volume_slices=true",
        "train.epochs=1", "train.steps_per_epoch=3", "train.val_crops=4", "model.depth=2", "model.base_filters=4",
        "augment.crop_size=48", "train.batch_size=2", "data.cache=" + str(tmp_path / "cache")])
    run = run_experiment(config, run_dir=tmp_path / "run", progress=False)
    _, meta, state = read_run(run)
    assert state["status"] == "finished" and meta["train_median_diameter"] > 0
    from unetflow.io import read_volume
    volume, voxel = read_volume(tmp_path / "data" / "images" / "v2.tif")
    labels, info = predict_volume(run, volume, anisotropy=voxel[0] / voxel[1])
    assert labels.shape == volume.shape and info["anisotropy"] == 2.0
    # evaluate scores such a run on volumes, in 3-D (not as 2-D images of 10 channels)
    from unetflow.evaluate import evaluate_run
    from unetflow.io import read_labels
    from unetflow.metrics import matching
    summary = evaluate_run(run, "val", progress=False)
    truth = read_labels(tmp_path / "data" / "labels" / "v2.tif", ndim=3)
    written, voxel = read_volume(run / "eval_val_3d" / "labels" / "v2.tif")
    np.testing.assert_array_equal(written, labels)  # what predict_volume gives, with the voxel size kept
    assert voxel == pytest.approx((0.5, 0.25, 0.25))
    m = matching(truth, labels, 0.5)
    assert (summary["volumes"], summary["n_images"], summary["n_true"]) == ("3d", 1, int(truth.max()))
    assert (summary["by_iou"]["0.50"]["tp"], summary["ap50"]) == (m.tp, pytest.approx(m.ap))
    assert summary["postprocess"]["flow_threshold"] == 0.0  # the options the masks were made with
    from unetflow.cli import main
    assert main(["compare", str(run), "--split", "val", "--3d", "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "volumes scored in 3-D" in report and "s per megavoxel" in report
    assert main(["evaluate", str(run), "--split", "val", "--stitch", "0.3"]) == 2  # --stitch needs --3d


def test_flow3d_outputs_round_trip_to_the_labels():
    """``[dz, dy, dx, cellprob]`` outputs made from labels' 3-D flows (x5) give those labels back."""
    from unetflow.conventions import flows_to_channels_last
    from unetflow.flows import masks_to_flows
    from unetflow.metrics import matching
    from unetflow.tasks import get_task

    truth = _blobs((24, 40, 40), [(12, 12, 12), (12, 12, 25), (10, 30, 28)], radius=7)  # two touching
    raw = np.concatenate([5 * flows_to_channels_last(masks_to_flows(truth)),
                          np.where(truth > 0, 10.0, -10.0)[..., None]], -1).astype(np.float32)
    task = get_task("flow3d")
    labels = task.to_labels(raw, task.postprocess_class(follow="cellprob"))
    m = matching(truth, labels, 0.9)
    assert m.tp == 3 and m.fp == 0, m
    assert task.channels == 4 and task.spatial_dims == 3


def test_volume_crops_transform_the_flow_vectors():
    """Flips and YX rotations of a volume crop carry the flows with them: the crop's flows point
    where the flows of the crop's own labels point."""
    from unetflow.config import AugmentConfig
    from unetflow.conventions import flows_to_channels_last
    from unetflow.flows import masks_to_flows
    from unetflow.volume import sample_volume_crop

    labels = _blobs((32, 32, 32), [(10, 10, 12), (20, 22, 18), (12, 24, 8)], radius=6)
    arrays = {"image": labels[..., None].astype(np.float32), "flows": flows_to_channels_last(masks_to_flows(labels)),
              "cellprob": (labels > 0).astype(np.uint8), "labels": labels}
    config = AugmentConfig(crop_size=32, blur_sigma=0.0, noise_std=0.0, intensity_jitter=0.0, gamma_range=(1.0, 1.0))
    transformed = 0
    for seed in range(8):
        crop = sample_volume_crop(np.random.default_rng(seed), arrays, config)  # the whole volume, transformed
        transformed += not np.array_equal(crop["labels"], labels)
        inside = crop["labels"] > 0
        ref = flows_to_channels_last(masks_to_flows(crop["labels"]))[inside]
        got = crop["flows"][inside]
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-6)
        assert np.median(cos) > 0.99 and cos.mean() > 0.9, (seed, np.median(cos), cos.mean())
        assert np.array_equal(crop["image"][..., 0], crop["labels"].astype(np.float32))  # aligned with the image
    assert transformed >= 6  # the draws did flip and rotate


def test_volume_crops_zoom_the_objects_and_carry_their_flows():
    """Scale augmentation of a volume crop: the same zoom along z, y and x (objects' volumes scale by
    its cube), the image and targets resampled together, the flow vectors those of the volume
    (nearest resampling: lengths and directions kept) pointing where the zoomed labels' own flows
    point, and zero outside objects."""
    from unetflow.config import AugmentConfig
    from unetflow.conventions import flows_to_channels_last
    from unetflow.flows import masks_to_flows
    from unetflow.volume import sample_volume_crop

    # each blob lies whole in the cube the crop is cut from (53 voxels zoomed by 0.6, 21 by 1.5)
    for zoom, labels in ((0.6, _blobs((64, 64, 64), [(32, 32, 32)], radius=9)),
                         (1.5, _blobs((21, 21, 21), [(10, 10, 10)], radius=6))):
        arrays = {"image": labels[..., None].astype(np.float32), "cellprob": (labels > 0).astype(np.uint8),
                  "flows": flows_to_channels_last(masks_to_flows(labels)), "labels": labels}
        config = AugmentConfig(crop_size=32, scale_range=(zoom, zoom), flips=False, rot90=False, blur_sigma=0.0,
                               noise_std=0.0, intensity_jitter=0.0, gamma_range=(1.0, 1.0), object_crop_tries=0)
        crop = sample_volume_crop(np.random.default_rng(0), arrays, config)
        assert all(a.shape[:3] == (32, 32, 32) for a in crop.values())
        actual = 32 / round(32 / zoom)
        assert (crop["labels"] > 0).sum() == pytest.approx((labels > 0).sum() * actual ** 3, rel=0.1)
        inside = crop["cellprob"] > 0
        assert inside.sum() > 500 and np.array_equal(inside, crop["labels"] > 0)
        bright = crop["image"][..., 0] > 0.5  # aligned with the image (a voxel's shift: IoU about 0.75)
        assert (bright & inside).sum() / (bright | inside).sum() > 0.85
        assert not crop["flows"][~inside].any()
        vectors = {tuple(v) for v in arrays["flows"][labels > 0]}
        assert all(tuple(v) in vectors for v in crop["flows"][inside])
        ref = flows_to_channels_last(masks_to_flows(crop["labels"]))[inside]
        cos = (crop["flows"][inside] * ref).sum(-1) / (np.linalg.norm(ref, axis=-1) + 1e-6)
        assert np.median(cos) > 0.95, (zoom, np.median(cos))


def test_a_3d_network_builds_and_its_config_is_checked():
    from unetflow.config import load_config
    from unetflow.models import build_unet, input_multiple

    model = build_unet(4, 1, depth=3, base_filters=4, spatial_dims=3)
    assert model.output_shape == (None, None, None, None, 4) and input_multiple(model) == 4
    assert model(np.zeros((1, 8, 12, 16, 1), np.float32)).shape == (1, 8, 12, 16, 4)
    config = Path(__file__).resolve().parent.parent / "experiments" / "gonuclear_flow3d.yaml"
    with pytest.raises(Exception, match="target_diameter must be null for the 3-D task"):
        load_config(config, ["augment.target_diameter=17"])
    with pytest.raises(Exception, match="volume_slices trains a 2-D network"):
        load_config(config, ["data.volume_slices=true"])


def test_a_3d_network_runs_on_cubes_that_agree_with_the_whole_volume():
    """A volume larger than the cube is predicted cube by cube (memory bounded by the cube); where one
    cube alone covers the volume, tapered weights included (at the volume's faces), the blended
    result is the whole volume's; a volume that fits is one call."""
    import keras

    from unetflow.models import build_unet
    from unetflow.tiling import taper
    from unetflow.volume import predict_volume_raw

    keras.utils.set_random_seed(0)
    model = build_unet(4, 1, depth=2, base_filters=4, spatial_dims=3)
    volume = np.random.default_rng(0).normal(size=(30, 70, 66, 1)).astype(np.float32)
    whole = predict_volume_raw(model, volume, 2, tile=128)
    calls = []
    counting = type("Counting", (), {"predict_on_batch": lambda self, x: calls.append(x.shape) or model(x).numpy()})()
    cubed = predict_volume_raw(counting, volume, 2, tile=32)
    assert cubed.shape == whole.shape == (30, 70, 66, 4)
    assert len(calls) > 1 and all(max(c[1:4]) <= 32 for c in calls)  # cubes, not the volume
    # cubes start at y 0, 20, 38 and x 0, 18, 36 (32 x 30 voxels, the receptive radius 9 as overlap)
    np.testing.assert_allclose(cubed[:, :18, :16], whole[:, :18, :16], atol=1e-5)
    np.testing.assert_allclose(cubed[:, 32:38, :16], whole[:, 32:38, :16], atol=1e-5)
    # where two cubes overlap (y 20-31), their outputs are averaged with weights tapering towards their faces
    first, second = (model(volume[None, :, y:y + 32, :30]).numpy()[0] for y in (0, 20))
    w_first, w_second = taper(32, 9)[20:32, None, None], taper(32, 9)[:12, None, None]
    blended = (w_first * first[:, 20:32, :16] + w_second * second[:, :12, :16]) / (w_first + w_second)
    np.testing.assert_allclose(cubed[:, 20:32, :16], blended, atol=1e-5)
    calls.clear()
    predict_volume_raw(counting, volume[:16, :24, :24], 2, tile=32)
    assert calls == [(1, 16, 24, 24, 1)]


@pytest.mark.slow
def test_a_3d_network_trains_on_volumes_and_segments_them(tmp_path):
    """``model.task: flow3d``: a manifest of volumes trains a 3-D U-Net on cubes; the run segments
    volumes (refusing the 2-D paths) and evaluate scores it in 3-D."""
    from unetflow.config import load_config
    from unetflow.evaluate import evaluate_run
    from unetflow.io import read_volume
    from unetflow.rundir import read_run
    from unetflow.train import run_experiment
    from unetflow.volume import predict_volume

    _volume_manifest(tmp_path / "data", ["train", "val"], (24, 48, 48), 4, [6, 8, 8], [18, 40, 40], 5)
    config = load_config(Path(__file__).resolve().parent.parent / "experiments" / "gonuclear_flow3d.yaml", [
        "data.manifest=" + str(tmp_path / "data" / "manifest.csv"), "train.epochs=1", "train.steps_per_epoch=2",
        "train.val_crops=2", "model.base_filters=4", "model.depth=2", "augment.crop_size=16", "train.batch_size=2",
        "data.cache=" + str(tmp_path / "cache")])
    run = run_experiment(config, run_dir=tmp_path / "run", progress=False)
    _, meta, state = read_run(run)
    assert state["status"] == "finished" and meta["train_median_diameter"] > 0
    volume, voxel = read_volume(tmp_path / "data" / "images" / "v1.tif")
    labels, info = predict_volume(run, volume, anisotropy=voxel[0] / voxel[1])
    assert labels.shape == volume.shape and info["postprocess"]["flow_threshold"] == 0.0
    with pytest.raises(ValueError, match="3-D network: it segments volumes in mode '3d' only"):
        predict_volume(run, volume, mode="stitch")
    with pytest.raises(ValueError, match="a 3-D run takes the stack at its own scale"):
        predict_volume(run, volume, diameter="auto")
    summary = evaluate_run(run, "val", progress=False)
    assert summary["volumes"] == "3d" and summary["task"] == "flow3d" and summary["n_images"] == 1
    from unetflow.predict import predict_instances
    with pytest.raises(ValueError, match="is a 3-D network .flow3d.: it segments .Z, Y, X. volumes"):
        predict_instances(run, volume[0])  # a 2-D image
