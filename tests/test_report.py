"""Report figures: file names that never collide, outlines readable on large images."""
import numpy as np

from unetflow.report import figure_stem
from unetflow.viz import detail_window


def test_figure_names_are_unique_whatever_the_image_names():
    # the lab's fields share long prefixes: a name cut to its first characters collides
    names = [f"MFGTMPcx7_170702000001_B14f07d1_long_screen_suffix_{i}" for i in range(3)]
    stems = [figure_stem(n) for n in names]
    assert len(set(stems)) == 3 and all(s.startswith("MFGTMPcx7_170702000001_B14f07d1") for s in stems)
    assert figure_stem("a b/c") != figure_stem("a_b_c") and "/" not in figure_stem("a b/c")


def test_detail_window_shows_where_the_objects_are():
    truth = np.zeros((900, 700), np.int32)
    truth[600:640, 500:540], truth[650:700, 560:600] = 1, 2
    ys, xs = detail_window(truth, [], 256)
    assert (ys.stop - ys.start, xs.stop - xs.start) == (256, 256)
    assert ys.start <= 600 and ys.stop >= 700 and xs.start <= 500 and xs.stop >= 600
    assert 0 <= ys.start and ys.stop <= 900 and 0 <= xs.start and xs.stop <= 700
    pred = np.zeros_like(truth)
    pred[10:60, 10:60] = 1  # predictions weigh in too
    ys, xs = detail_window(np.zeros_like(truth), [pred], 128)
    assert ys.start <= 10 and ys.stop >= 60 and xs.start <= 10 and xs.stop >= 60
    ys, xs = detail_window(truth[:100, :80], [], 256)  # smaller than the window: the whole image
    assert (ys.start, ys.stop, xs.start, xs.stop) == (0, 100, 0, 80)
