import numpy as np
import pytest
import tifffile

tf = pytest.importorskip("tensorflow")

from unetflow.augment import AugmentConfig
from unetflow.pipeline import load_training_data, make_dataset
from unetflow.precompute import TargetCache
from unetflow.preprocess import InputConfig, is_bright_background, prepare_image
from unetflow.synthetic import synthetic_nuclei


@pytest.fixture
def two_channel_data(tmp_path):
    imgs, labs = [], []
    for i in range(3):
        img, lab = synthetic_nuclei(np.random.default_rng(i), (50, 70))
        two = np.stack([img, img.max() - img], -1)  # a nuclei channel and an inverted "cell" channel
        imgs.append(tmp_path / f"i{i}.tif")
        labs.append(tmp_path / f"l{i}.tif")
        tifffile.imwrite(imgs[-1], two.astype(np.float32))
        tifffile.imwrite(labs[-1], lab.astype(np.uint16))
    return imgs, labs, TargetCache(tmp_path / "cache")


@pytest.mark.parametrize("task", ["flow", "boundary"])
def test_multichannel_batches_for_both_tasks(two_channel_data, task):
    imgs, labs, cache = two_channel_data
    cfg = InputConfig(channels=2, grey=False, invert_bright_background=False)
    data = load_training_data(imgs, labs, cache, cfg, progress=False)
    ds = make_dataset(data, task, AugmentConfig(crop_size=64), batch_size=4, seed=3)
    x, y = next(iter(ds))
    assert x.shape == (4, 64, 64, 2) and y.shape == (4, 64, 64, 3)  # 50x70 images padded to the crop
    y = y.numpy()
    if task == "flow":
        norms = np.sqrt((y[..., :2] ** 2).sum(-1))
        inside = y[..., 2] > 0.5
        assert np.all(norms[~inside] == 0) and np.median(norms[inside]) == pytest.approx(1, abs=1e-5)
    else:
        np.testing.assert_array_equal(y.sum(-1), 1)  # one-hot
    # the same seed gives the same batches; another seed others
    again = next(iter(make_dataset(data, task, AugmentConfig(crop_size=64), batch_size=4, seed=3)))
    np.testing.assert_array_equal(again[0].numpy(), x.numpy())
    other = next(iter(make_dataset(data, task, AugmentConfig(crop_size=64), batch_size=4, seed=4)))
    assert not np.array_equal(other[0].numpy(), x.numpy())


def test_input_conventions():
    img, _ = synthetic_nuclei(np.random.default_rng(0), (64, 64))
    assert not is_bright_background(img) and is_bright_background(img.max() - img)
    # sparse objects (0.4 % of the pixels) on a background of even noise: still read the right way round
    sparse = np.random.default_rng(0).integers(20, 30, (200, 200)).astype(np.float32)
    sparse[100:108, 100:120] = 200
    assert not is_bright_background(sparse) and is_bright_background(250 - sparse)
    a = prepare_image(img)
    b = prepare_image(img.max() - img)  # a brightfield-like inverted image is turned back
    np.testing.assert_allclose(a, b, atol=1e-4)
    lo, hi = np.percentile(a, [1, 99.8])
    assert lo == pytest.approx(0, abs=1e-6) and hi == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match=r"has 3 channel\(s\) but the model takes 2 channel"):
        prepare_image(np.zeros((8, 8, 3)), InputConfig(channels=2, grey=False))
    with pytest.raises(ValueError, match="grey"):
        InputConfig(channels=2, grey=True)
    # a colour model gets a grey image in every channel, each normalised as the grey model's one
    rgb = prepare_image(img, InputConfig(channels=3, grey=False))
    assert rgb.shape == img.shape + (3,)
    for c in range(3):
        np.testing.assert_allclose(rgb[..., c], a[..., 0], atol=1e-6)


def test_mismatched_image_and_label_named(tmp_path, two_channel_data):
    imgs, labs, cache = two_channel_data
    tifffile.imwrite(labs[1], np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="l1.tif"):
        load_training_data(imgs, labs, cache, InputConfig(channels=2, grey=False), progress=False)
