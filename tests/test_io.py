import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from unetflow.io import ImageReadError, read_image, read_labels, write_labels


def two_touching(shape=(12, 16)):
    labels = np.zeros(shape, np.int32)
    labels[2:9, 2:8] = 1
    labels[2:9, 8:14] = 2
    return labels


@pytest.mark.parametrize("ext, dtype, channels", [
    (".tif", np.uint8, None), (".tif", np.uint16, None), (".tif", np.uint8, 3), (".tif", np.uint16, 3),
    (".png", np.uint8, None), (".png", np.uint16, None), (".png", np.uint8, 3)])  # PNG has no 16-bit RGB writer here
def test_read_image_formats(tmp_path, ext, dtype, channels):
    rng = np.random.default_rng(0)
    shape = (10, 12) if channels is None else (10, 12, channels)
    img = rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    f = tmp_path / f"img{ext}"
    (tifffile.imwrite if ext == ".tif" else iio.imwrite)(f, img)
    out = read_image(f)
    assert out.dtype == np.float32 and out.shape == (10, 12, channels or 1)
    np.testing.assert_array_equal(out.reshape(shape), img.astype(np.float32))


def test_read_image_multichannel_and_channels_first_tiff(tmp_path):
    img = np.random.default_rng(1).random((5, 20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "mc.tif", img)
    out = read_image(tmp_path / "mc.tif")
    assert out.shape == (20, 30, 5)
    np.testing.assert_array_equal(out, np.moveaxis(img, 0, -1))


def test_read_image_drops_opaque_alpha(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., 0] = 7
    iio.imwrite(tmp_path / "a.png", rgba)
    assert read_image(tmp_path / "a.png").shape == (8, 8, 3)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.tif.*empty"):
        read_image(tmp_path / "empty.tif")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    bad = np.ones((6, 6), np.float32)
    bad[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(ImageReadError, match="nan.tif.*NaN"):
        read_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("ext, dtype", [(".tif", np.uint16), (".tif", np.uint32), (".png", np.uint16),
                                        (".png", np.uint8), (".tif", np.int64)])
def test_read_integer_labels_relabelled(tmp_path, ext, dtype):
    labels = two_touching()
    big = np.iinfo(dtype).max if dtype != np.int64 else 2 ** 40
    labels = np.where(labels == 1, big, np.where(labels == 2, 300 if dtype != np.uint8 else 30, 0)).astype(dtype)
    f = tmp_path / f"l{ext}"
    (tifffile.imwrite if ext == ".tif" else iio.imwrite)(f, labels)
    out = read_labels(f)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.where(labels == big, 2, np.where(labels > 0, 1, 0)))


def test_colour_coded_labels_of_equal_lightness_stay_apart(tmp_path):
    from skimage.color import rgb2lab
    from skimage.measure import label
    # two touching objects whose colours have the same CIELAB lightness (44.17) to 0.01
    a, b = (200, 40, 40), (140, 86, 134)
    rgb = np.zeros((12, 16, 3), np.uint8)
    t = two_touching()
    rgb[t == 1] = a
    rgb[t == 2] = b
    iio.imwrite(tmp_path / "colour.png", rgb)
    # reading a colour annotation as its CIELAB lightness (at the 8-bit precision a lightness image is
    # stored in) merges them: two touching objects of equal lightness become one
    lightness = np.round(rgb2lab(rgb)[..., 0] * 255 / 100).astype(np.uint8)
    assert label(lightness).max() == 1
    out = read_labels(tmp_path / "colour.png")
    assert out.max() == 2
    np.testing.assert_array_equal(out, t)


def test_colour_reused_for_distant_objects_gives_two_ids(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[1:4, 1:4] = (255, 0, 0)
    rgb[6:9, 14:18] = (255, 0, 0)
    rgb[1:4, 10:13] = (0, 255, 0)
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    assert read_labels(tmp_path / "c.tif").max() == 3


def test_binary_mask_warns_and_splits_components(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[1:4, 1:4] = 255
    mask[6:9, 10:15] = 255
    iio.imwrite(tmp_path / "b.png", mask)
    with pytest.warns(UserWarning, match="binary mask.*touching"):
        out = read_labels(tmp_path / "b.png")
    assert out.max() == 2


def test_label_errors_name_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "float.tif", np.full((5, 5), 1.5, np.float32))
    with pytest.raises(ImageReadError, match="float.tif.*not integer"):
        read_labels(tmp_path / "float.tif")
    tifffile.imwrite(tmp_path / "stack.tif", two_touching()[None].astype(np.uint16))
    with pytest.raises(ImageReadError, match="stack.tif.*singleton"):
        read_labels(tmp_path / "stack.tif")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_labels(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "neg.tif", -two_touching().astype(np.int16))
    with pytest.raises(ImageReadError, match="neg.tif.*negative"):
        read_labels(tmp_path / "neg.tif")


def test_write_labels_round_trip(tmp_path):
    t = two_touching() * 40000
    write_labels(tmp_path / "o.tif", t)
    back = tifffile.imread(tmp_path / "o.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, t)
    assert not list(tmp_path.glob(".*tmp*"))
