"""What automatic sizing costs: `predict_instances` with ``diameter="auto"`` against the size given.

    python benchmarks/bench_sizing.py [RUN] [--data DIR] [--split test] [--zooms 1 0.5 2] [--limit N]
                                      [--work DIR] [--repeats 1]

For each image of a split (and of copies zoomed by ``--zooms``, made as in ``bench_zoom.py``), in one
warm process, the run (default: the ready ``nuclei`` model) segments the image twice: with its
annotated median object diameter given, and with ``"auto"``.  The table has one row per image-size
bin (and zoom): seconds per megapixel of each, their ratio, AP@0.5 of each (pooled over the bin's
images) and the median relative error of the estimated diameters.  The last row pools everything.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import data_root, print_table

BINS = ((0, 0.1, "< 0.1 Mpx"), (0.1, 0.5, "0.1-0.5 Mpx"), (0.5, 1e9, ">= 0.5 Mpx"))


def timed(fn, repeats: int):
    """The result of `fn()` and its fastest wall time over `repeats` calls."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="nuclei", help="run directory or ready model name")
    ap.add_argument("--data", help="dataset folder with manifest.csv (default: $UNETFLOW_DATA or the DSB set)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--zooms", type=float, nargs="+", default=[1.0])
    ap.add_argument("--limit", type=int, help="the first N images of the split only")
    ap.add_argument("--work", default="/tmp/unetflow_zoom", help="where zoomed copies are kept")
    ap.add_argument("--repeats", type=int, default=1, help="time each call this often, keep the fastest")
    args = ap.parse_args()

    from bench_zoom import zoomed_copy

    from unetflow.io import read_image, read_labels
    from unetflow.predict import load_run, predict_instances

    root = data_root(args.data)
    run = load_run(args.run)
    rows, pooled = [], []
    for zoom in args.zooms:
        manifest = root / "manifest.csv" if zoom == 1 else zoomed_copy(run, args.split, zoom, Path(args.work),
                                                                       manifest=root / "manifest.csv",
                                                                       data_root=root)
        table = pd.read_csv(manifest)
        table = table[table["split"] == args.split]
        table = table.head(args.limit) if args.limit else table
        base = manifest.parent
        predict_instances(run, read_image(base / table["image"].iloc[0]), diameter="auto")  # warm up
        per = []
        for _, r in table.iterrows():
            x, truth = read_image(base / r["image"]), read_labels(base / r["label"])
            d_true = float(r["median_object_diameter_px"])
            (given, _), t_given = timed(lambda: predict_instances(run, x, diameter=d_true), args.repeats)
            (auto, raw), t_auto = timed(lambda: predict_instances(run, x, diameter="auto"), args.repeats)
            d = raw.get("diameter") or np.nan
            per.append(dict(zoom=zoom, mpx=x.shape[0] * x.shape[1] / 1e6, t_given=t_given, t_auto=t_auto,
                            truth=truth, given=given, auto=auto, error=abs(d / d_true - 1)))
        pooled += per
        for lo, hi, name in BINS:
            part = [p for p in per if lo <= p["mpx"] < hi]
            if part:
                rows.append(_row(f"{zoom:g}", name, part))
    if len(rows) > 1:
        rows.append(_row("all", "all", pooled))
    print_table(["zoom", "image size", "images", "given s/Mpx", "auto s/Mpx", "auto / given", "AP@0.5 given",
                 "AP@0.5 auto", "diameter error (median)"], rows)


def _row(zoom, name, part):
    from unetflow.metrics import matching_dataset

    mpx = sum(p["mpx"] for p in part)
    given = sum(p["t_given"] for p in part) / mpx
    auto = sum(p["t_auto"] for p in part) / mpx
    truth = [p["truth"] for p in part]
    ap_given = matching_dataset(truth, [p["given"] for p in part], 0.5)[0].ap
    ap_auto = matching_dataset(truth, [p["auto"] for p in part], 0.5)[0].ap
    return [zoom, name, len(part), f"{given:.2f}", f"{auto:.2f}", f"{auto / given:.2f}x", f"{ap_given:.3f}",
            f"{ap_auto:.3f}", f"{np.nanmedian([p['error'] for p in part]):.1%}"]


if __name__ == "__main__":
    main()
