"""Object size (unetflow.sizing): one vocabulary, the run's own choice, and the size search's rule."""
import dataclasses

import numpy as np
import pytest


@pytest.mark.parametrize("bad", [0, -3, "big", float("nan")])
def test_diameter_is_one_vocabulary(bad):
    from unetflow.sizing import check_diameter
    with pytest.raises(ValueError, match="positive number of pixels or 'auto' or 'native', got"):
        check_diameter(bad)
    assert check_diameter("auto") == "auto" and check_diameter(" Native") == "native"
    assert check_diameter(12) == 12.0 and check_diameter(None) is None
    with pytest.raises(ValueError, match="'manifest' is not available here"):
        check_diameter("manifest")
    assert check_diameter("manifest", words=("auto", "native", "manifest")) == "manifest"


def test_the_runs_own_choice_and_one_error_without_a_training_size():
    from unetflow.config import ExperimentConfig
    from unetflow.sizing import choose_sizing, zoom_factor

    cfg = ExperimentConfig()
    at_one_size = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, target_diameter=17))
    native = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, target_diameter=None))
    assert choose_sizing(None, at_one_size, 17, "run") == "auto"
    assert choose_sizing(None, native, None, "run") == "native"
    assert choose_sizing(30, native, 17, "run") == 30.0
    for wanted in ("auto", 30):  # a zoom needs the training size: the error names the run and the way out
        with pytest.raises(ValueError, match="old_run .*training object size is unknown.*use diameter 'native'"):
            choose_sizing(wanted, native, None, "old_run (meta.json has no train_median_diameter)")
    # a bare network has no config: it is sized natively unless told otherwise
    assert choose_sizing(None, None, None, "a bare model", default="native") == "native"
    with pytest.raises(ValueError, match="a bare model: the training object size is unknown"):
        choose_sizing("auto", None, None, "a bare model", default="native")
    assert zoom_factor(17, 34.0) == 0.5 and zoom_factor(17, "native") == 1.0 and zoom_factor(None, None) == 1.0


def test_size_search_votes_breaks_ties_stops_early_and_falls_back(monkeypatch):
    """estimate_diameter's rule on made-up measurements d(D): the value most candidates agree on
    (within SIZE_AGREEMENT), ties to the most self-consistent (d nearest D), tried from the largest
    candidate down and stopped once a candidate SIZE_BELOW times under the agreed size was tried;
    then measured once more at that size, which is the estimate if it agrees; 0 when nothing is found."""
    import unetflow.sizing as P

    tried = []

    def run(measure, candidates=P.SIZE_CANDIDATES):
        tried.clear()
        monkeypatch.setattr(P, "_measure_at", lambda model, x, D, **kw: tried.append(D) or measure(D))
        return P.estimate_diameter(None, None, task="flow", train_diameter=17, postprocess=None, candidates=candidates)

    # flat around 29 px for candidates 16-64 (the network finds the same objects), fragments below
    # (d follows D), nothing found above; measured at the agreed size itself: 30 px
    def flat(D):
        if D not in P.SIZE_CANDIDATES:
            return 30.0
        return 0.0 if D > 64 else (27.0 * (1 + 0.02 * np.log(D)) if D >= 16 else 0.9 * D)

    assert run(flat) == 30.0
    assert tried[:-1] == [256.0, 128.0, 64.0, 32.0, 16.0, 8.0]  # largest first; 4 px, far under 29, not tried
    assert tried[-1] == pytest.approx(np.median([flat(64.0), flat(32.0), flat(16.0)]))  # then the agreed size
    # the last measurement disagrees (objects fragment there): the agreed value stands
    assert run(lambda D: flat(D) if D in P.SIZE_CANDIDATES else 12.0) == pytest.approx(flat(32.0))
    # two groups of two, both seen before the stop: the one whose measurements match their candidates wins
    pairs = {45.0: 30.0, 40.0: 31.0, 22.0: 22.0, 20.0: 21.0}
    assert run(lambda D: pairs.get(D, 0.0), tuple(pairs)) == pytest.approx(np.exp(np.mean(np.log([22.0, 21.0]))))
    pairs = {45.0: 44.0, 40.0: 41.0, 22.0: 15.0, 20.0: 14.0}
    assert run(lambda D: pairs.get(D, 0.0), tuple(pairs)) == pytest.approx(np.exp(np.mean(np.log([44.0, 41.0]))))
    assert run(lambda D: 0.0) == 0.0 and len(tried) == len(P.SIZE_CANDIDATES)  # nothing found: the caller does not zoom


def _auto_size(monkeypatch, measure, found_at, shape=(100, 100, 1)):
    """auto_size on an image of `shape` with made-up probes ``measure(D)`` and segmentations whose
    objects measure ``found_at(d)`` when zoomed for objects of ``d`` px, the scale search giving
    25 px; returns the Sizing, the probes tried and the diameters segmented at."""
    import unetflow.flows
    import unetflow.predict
    import unetflow.sizing as P

    probes, segmented = [], []
    monkeypatch.setattr(P, "_measure_at", lambda model, x, D, **kw: probes.append(D) or measure(D))
    monkeypatch.setattr(P, "estimate_diameter", lambda *a, **kw: 25.0)
    monkeypatch.setattr(unetflow.predict, "raw_to_labels", lambda raw, task, pp: raw)
    monkeypatch.setattr(unetflow.flows, "diameters", lambda labels: labels["found"])

    class Labels(dict):
        def max(self):
            return 2

    def segment(factor):
        d = 17 / factor
        segmented.append(d)
        return Labels(found=found_at(d), at=d)

    sized = P.auto_size(None, np.zeros(shape, np.float32), task="flow", train_diameter=17, postprocess=None,
                        segment=segment)
    return sized, probes, segmented


def test_auto_size_probes_zoomed_out_first_and_keeps_a_settled_segmentation(monkeypatch):
    """auto_size's probes start at SIZE_PROBE_FROM x the training size and zoom in by 2 until the
    objects measure at least D / SIZE_PROBE_RANGE; the image is then segmented at that size, and a
    segmentation whose objects have the size it was zoomed for (within SIZE_SETTLED) is returned,
    outputs and labels with it, without another pass."""
    from unetflow.sizing import SIZE_PROBE_FROM, zoom_factor

    # 12-px objects: too small to be measured at 272 ... 34 px (zoomed out 16x ... 2x), measured at 17
    sized, probes, segmented = _auto_size(monkeypatch, lambda D: 12.0, lambda d: 12.5)
    assert SIZE_PROBE_FROM == 16 and probes == [272.0, 136.0, 68.0, 34.0, 17.0] and segmented == [12.0]
    assert sized.diameter == 12.0 and sized.factor == pytest.approx(zoom_factor(17, 12.0))
    assert sized.labels["at"] == pytest.approx(12.0) and sized.raw is sized.labels  # the pass itself
    # large objects are measured by the first probe that sees them whole
    sized, probes, segmented = _auto_size(monkeypatch, lambda D: 60.0 if D >= 60 else 0.4 * D, lambda d: 58.0)
    assert probes == [272.0, 136.0, 68.0] and segmented == [60.0] and sized.diameter == 60.0
    # unsettled, the image is segmented again at what the objects measured, and kept if that settles
    sized, _, segmented = _auto_size(monkeypatch, lambda D: 40.0, {40.0: 20.0, 20.0: 19.0}.get)
    assert segmented == [40.0, 20.0] and sized.diameter == 20.0 and sized.labels["at"] == 20.0


def test_auto_size_falls_back_on_the_scale_search(monkeypatch):
    """When no segmentation settles within SIZE_PASSES, when the probes find nothing, and for images
    over SIZE_WHOLE pixels, the scale search (here 25 px) decides and there is nothing to keep."""
    import unetflow.sizing as P

    unsettled = {40.0: 20.0, 20.0: 12.0, 12.0: 12.0}.get  # a third pass would settle on the pieces
    sized, _, segmented = _auto_size(monkeypatch, lambda D: 40.0, unsettled)
    assert segmented == [40.0, 20.0] and (sized.diameter, sized.raw, sized.labels) == (25.0, None, None)
    sized, probes, segmented = _auto_size(monkeypatch, lambda D: 0.0, None)
    assert segmented == [] and probes[-1] < 2 * P.SIZE_CANDIDATES[-1] and sized.diameter == 25.0
    monkeypatch.setattr(P, "SIZE_WHOLE", 99 * 100)
    sized, probes, segmented = _auto_size(monkeypatch, lambda D: 12.0, lambda d: 12.0)
    assert probes == segmented == [] and sized.diameter == 25.0 and sized.raw is None


def test_auto_is_the_segmentation_at_the_size_it_reports(tmp_path):
    """With the ready model on made-up nuclei, ``diameter="auto"`` gives exactly the labels and outputs
    of a prediction with the diameter it reports given, in predict_instances, segment_images and
    evaluation's predict_split (each keeps the size search's segmentation instead of redoing it)."""
    from skimage.draw import disk

    from unetflow.evaluate import predict_split
    from unetflow.io import write_image
    from unetflow.predict import load_run, predict_instances, segment_images
    from unetflow.tasks import get_task

    rng = np.random.default_rng(0)
    image = rng.normal(20, 4, (200, 240)).clip(0, 255)
    for cy, cx in rng.uniform(15, 185, (14, 2)):
        image[disk((cy, cx * 1.2), 9, shape=image.shape)] = 180 + rng.normal(0, 10)
    image = image.astype(np.uint8)
    run = load_run("nuclei")
    labels, raw = predict_instances(run, image, diameter="auto")
    d = raw["diameter"]
    assert 12 <= d <= 26 and labels.max() >= 10  # 18-px discs
    given, raw_given = predict_instances(run, image, diameter=d)
    np.testing.assert_array_equal(labels, given)
    np.testing.assert_array_equal(raw["flows"], raw_given["flows"])
    path = tmp_path / "nuclei.tif"
    write_image(path, image)
    [(_, streamed, raw_streamed)] = list(segment_images(run, [path], diameter="auto"))
    np.testing.assert_array_equal(streamed, labels)
    assert raw_streamed["diameter"] == d
    raws, timing = predict_split(run, [path], diameters="auto", progress=False)
    assert timing["diameters"] == [d]
    np.testing.assert_array_equal(get_task("flow").outputs(raws[0])["flows"], raw["flows"])


@pytest.mark.slow
def test_the_ready_model_sizes_real_nuclei(dsb_root):
    """The size search on real DSB test images (every tenth of the grouped test split, 12-44 px
    nuclei): median error 2.8 % against the annotations' diameters when measured, one image of
    seven off by 4x.  It guards the chain (zoom, window, network, measurement back in the image's
    pixels: forgetting to undo the zoom fails it); the voting rule has its own test above."""
    import pandas as pd

    from unetflow.io import read_image
    from unetflow.predict import load_run
    from unetflow.preprocess import prepare_image
    from unetflow.sizing import estimate_diameter

    table = pd.read_csv(dsb_root / "manifest.csv")
    rows = table[table["split"] == "test"].iloc[::10][:8]
    run = load_run("nuclei")
    errors = []
    for r in rows.itertuples():
        x = prepare_image(read_image(dsb_root / r.image), run.config.input)
        d = estimate_diameter(run.model, x, task="flow", train_diameter=run.train_diameter,
                              postprocess=run.postprocess_config())
        errors.append(abs(d / r.median_object_diameter_px - 1))
    assert np.median(errors) <= 0.10 and np.mean(np.array(errors) <= 0.15) >= 5 / 7, errors
