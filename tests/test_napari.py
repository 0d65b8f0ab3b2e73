"""The napari plugin: its npe2 manifest, and the widget and reader functions headless (no viewer)."""
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from unetflow._napari import get_reader, read_outputs, segment
from unetflow.formats import write_outputs
from unetflow.synthetic import synthetic_nuclei


def test_npe2_validates_the_manifest():
    npe2 = shutil.which("npe2")
    if npe2 is None:
        pytest.skip("npe2 is not installed (pip install 'unetflow[test]')")
    res = subprocess.run([npe2, "validate", "unetflow", "--imports"], capture_output=True, text=True)
    assert res.returncode == 0 and "valid" in res.stdout, res.stdout + res.stderr


def test_reader_opens_seg_npy_and_label_tiffs(tmp_path):
    from unetflow.flows import masks_to_flows

    _, labels = synthetic_nuclei(np.random.default_rng(0), (64, 80))
    raw = {"flows": 5 * masks_to_flows(labels), "cellprob": np.where(labels > 0, 3.0, -3.0)}
    write_outputs(tmp_path, "cells", labels, raw, ["cellpose", "labels"])
    layers = get_reader(str(tmp_path / "cells_seg.npy"))(str(tmp_path / "cells_seg.npy"))
    (masks, meta, kind), (rgb, rgb_meta, rgb_kind) = layers
    assert kind == "labels" and np.array_equal(masks, labels) and meta["name"] == "cells_seg"
    assert rgb_kind == "image" and rgb.shape == (*labels.shape, 3) and rgb_meta["rgb"]
    (lab, _, kind), = read_outputs(tmp_path / "cells_labels.tif")
    assert kind == "labels" and np.array_equal(lab, labels)
    assert get_reader(str(tmp_path / "cells.png")) is None and get_reader([str(tmp_path / "cells_seg.npy")]) is None
    np.save(tmp_path / "bad_seg.npy", {"outlines": labels}, allow_pickle=True)
    with pytest.raises(ValueError, match="bad_seg.npy.*masks"):
        read_outputs(tmp_path / "bad_seg.npy")


@pytest.mark.slow
def test_reader_opens_label_stacks_at_their_voxel_size(tmp_path):
    from unetflow.io import write_volume_labels

    stack = np.zeros((6, 20, 24), np.uint16)
    stack[1:4, 2:9, 3:10], stack[2:6, 12:18, 14:22] = 1, 2
    write_volume_labels(tmp_path / "vol_labels.tif", stack, (0.5, 0.25, 0.25))  # what predict --3d writes
    (lab, meta, kind), = get_reader(str(tmp_path / "vol_labels.tif"))(str(tmp_path / "vol_labels.tif"))
    assert kind == "labels" and np.array_equal(lab, stack) and meta["scale"] == pytest.approx((0.5, 0.25, 0.25))
    write_volume_labels(tmp_path / "bare_labels.tif", stack)  # no voxel size: still a stack, unscaled
    (lab, meta, _), = read_outputs(tmp_path / "bare_labels.tif")
    assert np.array_equal(lab, stack) and "scale" not in meta


def test_widget_segments_an_image_layer(tiny_flow, capsys):
    from unetflow.metrics import matching
    from unetflow.predict import predict_instances

    _, run_dir = tiny_flow
    img, truth = synthetic_nuclei(np.random.default_rng(1), (96, 96))
    layer = SimpleNamespace(data=img, name="cells")
    (labels, meta, kind), (rgb, rgb_meta, _) = segment(layer, run=str(run_dir))
    assert kind == "labels" and meta["name"] == "cells labels" and labels.shape == img.shape[:2]
    assert np.array_equal(labels, predict_instances(str(run_dir), img)[0])  # the widget is predict_instances
    assert matching(truth, labels, 0.5).recall > 0.5
    assert rgb.shape == (96, 96, 3) and rgb_meta["rgb"] and not rgb_meta["visible"]
    assert "objects in cells" in capsys.readouterr().out
    # explicit thresholds instead of the tuned ones: a cellprob threshold above every logit finds nothing
    (none, _, _), _ = segment(layer, run=str(run_dir), tuned_thresholds=False, cellprob_threshold=1e6)
    assert none.max() == 0


@pytest.mark.slow
def test_inside_napari(tiny_flow, tmp_path):
    """With napari installed (``pip install 'unetflow[napari]'``, its own environment): npe2 finds the
    plugin, its reader opens a _seg.npy, and magicgui builds the widget's form, whose thresholds
    accept negative logits."""
    pytest.importorskip("napari")
    import npe2
    from magicgui import magicgui
    from napari.layers import Image

    from unetflow.flows import masks_to_flows

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert [w.display_name for w in pm.get_manifest("unetflow").contributions.widgets] == ["Segment (unetflow)"]
    _, labels = synthetic_nuclei(np.random.default_rng(0), (64, 80))
    write_outputs(tmp_path, "cells", labels, {"flows": 5 * masks_to_flows(labels), "cellprob": labels > 0}, ["cellpose"])
    layers = npe2.read([str(tmp_path / "cells_seg.npy")], stack=False, plugin_name="unetflow")
    assert [layer[2] for layer in layers] == ["labels", "image"]
    gui = magicgui(segment)
    gui.cellprob_threshold.value = -2.0
    assert gui.cellprob_threshold.value == -2.0
    img, _ = synthetic_nuclei(np.random.default_rng(1), (96, 96))
    out = gui(image=Image(img, name="cells"), run=str(tiny_flow[1]))
    assert [(d[1]["name"], d[2]) for d in out] == [("cells labels", "labels"), ("cells flows", "image")]
