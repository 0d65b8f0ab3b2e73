import numpy as np
import pytest

keras = pytest.importorskip("keras")

from unetflow.models import build_flow_unet
from unetflow.predict import predict_instances, predict_raw, tile_layout


@pytest.fixture(scope="module")
def model():
    # batch norm off: a batch-norm layer in inference mode is per-pixel anyway, but this keeps the
    # model a pure convolution whose outputs depend only on a finite neighbourhood; seeded, so the
    # seam tolerances below hold for these weights on every CPU
    keras.utils.set_random_seed(0)
    return build_flow_unet(depth=3, base_filters=4, batch_norm=False)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_receptive_radius_is_the_networks_reach(depth):
    """A change of one input pixel moves outputs exactly up to ``receptive_radius`` px away (the
    tiling's overlap rests on it)."""
    from unetflow.geometry import min_input_multiple, receptive_radius

    keras.utils.set_random_seed(depth)
    net = build_flow_unet(depth=depth, base_filters=4, batch_norm=False)
    r = receptive_radius(min_input_multiple(depth))
    m = min_input_multiple(depth)
    side = -(-(2 * r + 2 * m + 16) // m) * m
    x = np.random.default_rng(0).random((1, side, side, 1)).astype(np.float32)
    base = net(x).numpy()[0]
    reach = 0
    for dy, dx in ((0, 0), (1, 1), (0, 1), (1, 0), (3, 2)):  # every phase of the pooling grid
        y0, x0 = side // 2 + dy, side // 2 + dx
        moved = x.copy()
        moved[0, y0, x0] += 5.0
        ys, xs = np.nonzero(np.abs(net(moved).numpy()[0] - base).max(-1) > 1e-6)
        reach = max(reach, np.abs(ys - y0).max(), np.abs(xs - x0).max())
    assert reach == r


def test_tile_layout_covers_with_overlap_and_few_pixels():
    for length, tile, margin, mult in [(100, 32, 8, 4), (256, 256, 25, 8), (300, 128, 23, 4), (31, 64, 6, 1),
                                       (200, 96, 24, 4), (232, 96, 24, 4),
                                       (1000, 512, 51, 8), (2000, 512, 51, 8), (360, 512, 51, 8)]:
        starts, size = tile_layout(length, tile, margin, mult)
        assert starts[0] == 0 and starts[-1] + size == length and size <= tile
        assert length <= tile or (size % mult == 0 and all(s % mult == 0 for s in starts))
        assert all(a + size - b >= margin for a, b in zip(starts, starts[1:]))  # neighbours overlap enough
        # the fewest tiles: one fewer could not cover the length with that overlap
        n = len(starts)
        assert n == 1 or (n - 1) * tile - (n - 2) * (margin + mult) < length
    assert tile_layout(360, 512, 51, 8) == ([0], 360)  # one pass, not two tiles of 256


def _min_margin(length, tile, overlap):
    """For each position, the smallest distance to the edge of any tile that covers it."""
    margin = np.full(length, np.inf)
    starts, tile = tile_layout(length, tile, int(tile * overlap), 4)
    for start in starts:
        pos = np.arange(start, start + tile)
        margin[pos] = np.minimum(margin[pos], np.minimum(pos - start, start + tile - 1 - pos))
    return margin


@pytest.mark.parametrize("task", ["flow", "boundary", "distance"])
def test_tiled_equals_whole_image_away_from_tile_borders(task):
    from unetflow.config import ModelConfig
    from unetflow.geometry import receptive_radius
    from unetflow.tasks import get_task

    keras.utils.set_random_seed(0)
    net = get_task(task).build_model(1, ModelConfig(task=task, depth=3, base_filters=4, batch_norm=False))
    rng = np.random.default_rng(0)
    image = rng.random((200, 232, 1)).astype(np.float32)
    whole = predict_raw(net, image, task=task, tile_size=512)
    tiled = predict_raw(net, image, task=task, tile_size=96, overlap=0.25)
    assert tiled.shape == whole.shape == (200, 232, get_task(task).channels)
    # a depth-3 U-Net sees 23 px around a pixel: where every tile covering a pixel has that much
    # margin, tiling cannot change its output
    r = receptive_radius(4)
    far = (_min_margin(200, 96, 0.25)[:, None] >= r) & (_min_margin(232, 96, 0.25)[None, :] >= r)
    assert far.sum() > 1000
    np.testing.assert_allclose(tiled[far], whole[far], atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("overlap", [0.25, 0.01])
def test_seams_are_blended(model, overlap):
    """Near seams a tile's outputs lack context; the tapered blend hides that.  For these weights
    the blended error is 0.07 of the output range; equal weights give 0.40, and tiles that overlap
    less than the network's reach (the overlap given here as 0.01 is raised to it) more."""
    image = np.random.default_rng(0).random((200, 232, 1)).astype(np.float32)
    whole = predict_raw(model, image, task="flow", tile_size=512)
    tiled = predict_raw(model, image, task="flow", tile_size=48, overlap=overlap)
    assert np.abs(tiled - whole).max() < 0.2 * np.abs(whole).max()


def test_no_object_split_at_seams():
    """An oracle 'network' that knows the ideal outputs but, like a real one, outputs garbage near
    the edges of its tiles inside the image (no context there): the tapered blend recovers every
    object across the seams (equal weights lose a third of them)."""
    from unetflow.flows import masks_to_flows
    from unetflow.metrics import matching
    from unetflow.synthetic import synthetic_nuclei

    H, W = 300, 330
    _, labels = synthetic_nuclei(np.random.default_rng(1), (H, W))
    target = np.concatenate([5 * np.moveaxis(masks_to_flows(labels), 0, -1),
                             np.where(labels > 0, 10.0, -10.0)[..., None]], -1).astype(np.float32)

    class Oracle:
        """The ideal outputs for whatever tile it is shown (the tile's pixels carry their index),
        spoilt within 6 px of every tile edge that is not the image's."""
        inputs = [type("T", (), {"shape": (None, None, None, 1)})()]
        layers = [type("L", (), {"name": f"down{i}_pool"})() for i in range(2)]
        rng = np.random.default_rng(0)

        def predict_on_batch(self, batch):
            idx = batch[..., 0].astype(int)
            y, x = idx // W, idx % W
            near = np.zeros(idx.shape, bool)
            for n in range(len(idx)):
                (y0, y1), (x0, x1) = (y[n].min(), y[n].max()), (x[n].min(), x[n].max())
                near[n] = (((y[n] - y0 < 6) & (y0 > 0)) | ((y1 - y[n] < 6) & (y1 < H - 1))
                           | ((x[n] - x0 < 6) & (x0 > 0)) | ((x1 - x[n] < 6) & (x1 < W - 1)))
            return target.reshape(-1, 3)[idx] + near[..., None] * self.rng.normal(0, 8, idx.shape + (3,))

    index = np.arange(H * W, dtype=np.float32).reshape(H, W, 1)
    labels_out, raw = predict_instances(Oracle(), index, task="flow", tile_size=96, overlap=0.15,
                                        follow="cellprob", interp=True)
    m = matching(labels, labels_out, 0.5)
    big = np.bincount(labels.ravel())[1:] >= 15
    assert m.tp >= big.sum() - 1 and m.fp <= 1, m  # one object per object, across tile seams


def test_tta_unflips_flow_components():
    class Flipper:
        """Outputs dx = +1 where the input increases to the right: flipping must not change the answer."""
        inputs = [type("T", (), {"shape": (None, None, None, 1)})()]
        layers = []

        def predict_on_batch(self, batch):
            x = batch[..., 0]
            dy = np.gradient(x, axis=1)
            dx = np.gradient(x, axis=2)
            return np.stack([dy, dx, np.zeros_like(x)], -1)

    # a random image: the gradients differ from pixel to pixel, so a flip not undone moves them
    image = np.random.default_rng(0).random((12, 16, 1)).astype(np.float32)
    plain = predict_raw(Flipper(), image, task="flow")
    tta = predict_raw(Flipper(), image, task="flow", tta=True)
    assert np.abs(plain[..., :2]).std() > 0.1
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_channel_mismatch_and_task_errors(model):
    with pytest.raises(ValueError, match="2 input channel.*expects 1"):
        predict_instances(model, np.zeros((32, 32, 2), np.float32), task="flow")
    with pytest.raises(ValueError, match="task"):
        predict_instances(model, np.zeros((32, 32), np.float32))


def test_rescaling_to_the_training_object_size(model):
    """Objects half the training size: the image is zoomed 2x for the network and the outputs scaled back."""
    calls = []

    class Recorder:
        inputs = model.inputs
        layers = model.layers

        def predict_on_batch(self, batch):
            calls.append(batch.shape)
            return model.predict_on_batch(batch)

    image = np.random.default_rng(2).random((40, 52)).astype(np.float32)
    labels, raw = predict_instances(Recorder(), image, task="flow", diameter=10, train_diameter=20)
    assert labels.shape == (40, 52) and raw["flows"].shape == (2, 40, 52)
    assert calls[0][1:3] == (80, 104)
    calls.clear()
    predict_instances(Recorder(), image, task="flow", diameter=20, train_diameter=20)
    assert calls[0][1:3] == (40, 52)
    with pytest.raises(ValueError, match="train_diameter"):  # a diameter alone must not be ignored silently
        predict_instances(Recorder(), image, task="flow", diameter=20)


class _Scaler:
    """A stand-in network: outputs (2x, -x, x + 1) of each pixel, recording every batch it is given."""
    inputs = [type("T", (), {"shape": (None, None, None, 1)})()]
    layers = []

    def __init__(self):
        self.batches = []

    def predict_on_batch(self, batch):
        self.batches.append(batch.shape)
        x = batch[..., 0]
        return np.stack([2 * x, -x, x + 1], -1)


def test_tiles_of_many_images_share_network_calls():
    from unetflow.predict import predict_raw_many

    rng = np.random.default_rng(4)
    sizes = [(64, 64)] * 5 + [(40, 52), (64, 64), (64, 64), (40, 52)]
    images = [rng.random(s + (1,)).astype(np.float32) for s in sizes]
    net = _Scaler()
    outs = list(predict_raw_many(net, [(x, 1.0) for x in images], task="flow", input_multiple=4, batch_size=8))
    for x, out in zip(images, outs):  # in order, each the network's output of its own image
        np.testing.assert_allclose(out, np.concatenate([2 * x, -x, x + 1], -1), rtol=1e-6)
    # seven 64² images in one call, the two 40x52 ones (padded to the multiple of 4) in another
    assert sorted(net.batches) == [(2, 40, 52, 1), (7, 64, 64, 1)]


def test_images_are_read_lazily_and_memory_stays_bounded():
    from unetflow.predict import predict_raw_many

    consumed = []

    def items():
        for k in range(20):
            consumed.append(k)
            yield np.full((32, 32, 1), k, np.float32), 1.0

    stream = predict_raw_many(_Scaler(), items(), task="flow", input_multiple=4, batch_size=1, lookahead=3)
    first = next(stream)
    assert first[0, 0, 2] == 1 and len(consumed) <= 4  # the first output before most images were read
    rest = list(stream)
    assert [r[0, 0, 2] - 1 for r in rest] == list(range(1, 20))


def test_tiled_stream_equals_one_image_at_a_time(model):
    from unetflow.predict import predict_raw_many

    rng = np.random.default_rng(5)
    images = [rng.random(s + (1,)).astype(np.float32) for s in [(70, 90), (64, 64), (70, 90), (33, 47)]]
    alone = [predict_raw(model, x, task="flow", tile_size=48, overlap=0.2) for x in images]
    together = list(predict_raw_many(model, [(x, 1.0) for x in images], task="flow", tile_size=48, overlap=0.2))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())


def test_segment_images_matches_one_by_one_and_reports_bad_files(tiny_flow, tmp_path):
    from unetflow.io import write_image
    from unetflow.predict import load_run, segment_images
    from unetflow.synthetic import synthetic_nuclei

    _, run_dir = tiny_flow
    run = load_run(run_dir, precision="float32")
    rng = np.random.default_rng(6)
    paths = []
    for k, shape in enumerate([(64, 80), (96, 96), (64, 80)]):
        image, _ = synthetic_nuclei(rng, shape)
        paths.append(write_image(tmp_path / f"im{k}.tif", image))
        if k == 1:
            bad = tmp_path / "broken.tif"
            bad.write_bytes(b"not a tiff")
            paths.append(bad)
    results = list(segment_images(run, paths, diameter=None))
    errors = [r for r in results if isinstance(r[1], Exception)]
    assert [r[0] for r in errors] == [bad] and "cannot be read" in str(errors[0][1])
    good = [r for r in results if not isinstance(r[1], Exception)]
    assert [r[0] for r in good] == [p for p in paths if p != bad]  # in input order
    from unetflow.io import read_image
    from unetflow.predict import raw_to_labels
    for path, labels, raw in good:
        ref_labels, ref_raw = predict_instances(run, read_image(path), diameter=None)
        # the same network outputs, up to the rounding of a different batch ...
        np.testing.assert_allclose(raw["flows"], ref_raw["flows"], atol=1e-4)
        assert labels.shape == ref_labels.shape
        # ... and the labels are exactly those outputs' post-processing (which rounding could flip)
        outputs = np.concatenate([np.moveaxis(raw["flows"], 0, -1), raw["cellprob"][..., None]], -1)
        np.testing.assert_array_equal(labels, raw_to_labels(outputs, "flow", run.postprocess_config()))

