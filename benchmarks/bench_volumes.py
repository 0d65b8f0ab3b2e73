"""Runs on annotated volumes: 3-D AP, merges and splits, and seconds per megavoxel.

    python benchmarks/bench_volumes.py RUN_OR_MODEL [...] --data DIR [--split val] [--modes 3d stitch]
                                       [--diameter auto|native|manifest|PX] [--stitch-threshold 0.25]

Each run (a run directory or a ready model's name, e.g. ``nuclei``) segments every volume of the split
of ``DIR/manifest.csv`` with :func:`unetflow.volume.predict_volume`, the anisotropy read from each file;
``--diameter manifest`` sizes each volume by the manifest's ``median_object_diameter_vox``.  Scores are
3-D: AP at IoU 0.5 / 0.75 / 0.9 with counts summed over the volumes, and the BBBC merges and splits
(IoU > 0.1).  The time is the whole of ``predict_volume`` (resampling, the three views, 3-D masks).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import print_table


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", required=True, help="folder with manifest.csv listing (Z, Y, X) volumes")
    p.add_argument("--split", default="val")
    p.add_argument("--modes", nargs="+", default=["3d"], choices=["3d", "stitch"])
    p.add_argument("--diameter", default=None)
    p.add_argument("--stitch-threshold", type=float, default=0.25)
    args = p.parse_args()

    from unetflow.io import read_labels, read_volume
    from unetflow.metrics import error_categories, matching_dataset
    from unetflow.predict import load_run
    from unetflow.volume import predict_volume

    root = Path(args.data)
    table = pd.read_csv(root / "manifest.csv")
    table = table[table["split"] == args.split]
    if table.empty:
        raise SystemExit(f"{root / 'manifest.csv'}: no volumes in split {args.split!r}")
    volumes = [(read_volume(root / r.image), read_labels(root / r.label, ndim=3), r) for r in table.itertuples()]
    rows = []
    for name in args.runs:
        run = load_run(name)
        for mode in args.modes:
            preds, seconds, voxels = [], 0.0, 0
            for (volume, voxel), _, r in volumes:
                d = getattr(r, "median_object_diameter_vox") if args.diameter == "manifest" else args.diameter
                t0 = time.perf_counter()
                try:
                    labels, _ = predict_volume(run, volume, anisotropy=voxel[0] / voxel[1] if voxel else None,
                                               diameter=d, mode=mode, stitch_threshold=args.stitch_threshold)
                except ValueError as exc:  # e.g. a size estimate that would blow the volume up
                    print(f"{name} {mode} {r.image}: {exc}")
                    labels = np.zeros(volume.shape[:3], np.int32)
                seconds += time.perf_counter() - t0
                voxels += int(np.prod(volume.shape[:3]))
                preds.append(labels)
            truth = [t for _, t, _ in volumes]
            ap = matching_dataset(truth, preds, [0.5, 0.75, 0.9])
            errs = [error_categories(t, pr) for t, pr in zip(truth, preds)]
            rows.append([Path(name).name, mode, args.diameter or "run's own", len(preds),
                         *(f"{m.ap:.3f}" for m in ap), sum(e["merges"] for e in errs), sum(e["splits"] for e in errs),
                         f"{seconds / (voxels / 1e6):.1f}"])
    print_table(["run", "mode", "diameter", "volumes", "AP@0.5", "AP@0.75", "AP@0.9", "merges", "splits", "s/Mvox"],
                rows)


if __name__ == "__main__":
    main()
