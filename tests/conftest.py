import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DSB = Path(os.environ.get("UNETFLOW_DATA") or REPO.parent / "shared" / "data" / "dsb2018_stage1_train")


@pytest.fixture(scope="session")
def dsb_root():
    """The real DSB 2018 data beside the repo (../shared/data), or $UNETFLOW_DATA."""
    if not (DSB / "manifest.csv").is_file():
        pytest.skip(f"DSB data not found at {DSB} (set UNETFLOW_DATA)")
    return DSB


@pytest.fixture(scope="session")
def dsb_label_files(dsb_root):
    import pandas as pd
    table = pd.read_csv(dsb_root / "manifest.csv")
    # 20 images spread over the set (sorted ids), all three modalities included
    rows = table.sort_values("image").iloc[::33][:20]
    return [dsb_root / p for p in rows["label"]]


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory):
    """experiments/tiny_flow.yaml trained once on the synthetic set: (config, run directory)."""
    pytest.importorskip("tensorflow")
    from unetflow.config import load_config
    from unetflow.train import run_experiment

    tmp_path = tmp_path_factory.mktemp("tiny_flow")
    cfg = load_config(REPO / "experiments" / "tiny_flow.yaml", ["output_dir=" + str(tmp_path / "runs"),
                                                                "data.cache=" + str(tmp_path / "cache"),
                                                                "data.root=" + str(tmp_path / "synth")])
    return cfg, run_experiment(cfg, progress=False)


def random_labels(rng, shape=(48, 56), n=12, kind="touching"):
    """Random instance labels: discs/rectangles that touch, cross the border, have holes, or are
    one pixel; ids are shuffled and non-sequential."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ids = rng.choice(np.arange(1, 1000), size=n, replace=False)
    for i in ids:
        cy, cx = rng.integers(-3, shape[0] + 3), rng.integers(-3, shape[1] + 3)
        r = rng.uniform(1, 9)
        if kind == "rect":
            obj = (abs(yy - cy) <= r) & (abs(xx - cx) <= rng.uniform(0.5, 12))
        else:
            obj = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if kind == "holes" and r > 4:
            obj &= (yy - cy) ** 2 + (xx - cx) ** 2 > (r / 3) ** 2
        labels[obj] = i  # later objects overwrite: touching, partly covered objects
    if kind == "pixels":
        for i in rng.choice(np.arange(1000, 2000), size=5, replace=False):
            labels[rng.integers(shape[0]), rng.integers(shape[1])] = i
    return labels
