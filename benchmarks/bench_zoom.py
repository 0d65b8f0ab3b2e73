"""Zoom robustness: a run on copies of a split zoomed by 0.5, 2 and 4, with and without `--diameter auto`.

    python benchmarks/bench_zoom.py RUN_DIR [RUN_DIR ...] [--split test] [--zooms 0.5 1 2 4] [--work DIR]

The zoomed copies (images bilinear, labels nearest, the manifest's ``median_object_diameter_px``
scaled) are written once under ``--work`` and reused.  Each run is evaluated on each copy with every
image at its own scale (``native``) and with ``auto`` sizing; the table gives AP@0.5, the median
relative error of the estimated diameters against the annotated ones, and the seconds per megapixel
of the size estimation next to the network's.  Results land in ``RUN/eval_<split>_{native,auto}_zoomZ``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import print_table


def zoomed_copy(run, split: str, zoom: float, work: Path, *, manifest=None, data_root=None) -> Path:
    """A manifest of `split` (of the run's manifest, or of `manifest` under `data_root`) with every
    image and label zoomed by `zoom`, written once under `work`, in a folder named after the data."""
    from skimage.transform import rescale

    from unetflow.evaluate import split_files
    from unetflow.io import read_image, read_labels, write_image, write_labels

    images, labels, names, rows = split_files(run, split, manifest=manifest, data_root=data_root)
    out = work / Path(images[0]).parent.parent.name / f"{split}_zoom{zoom:g}"  # one folder per dataset
    manifest = out / "manifest.csv"
    if manifest.is_file():
        return manifest
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for img, lab, name in zip(images, labels, names):
        x = read_image(img)
        x = rescale(x, zoom, order=1, channel_axis=-1, preserve_range=True, anti_aliasing=zoom < 1)
        write_image(out / "images" / f"{name}.tif", np.round(x).astype(np.uint8))
        y = rescale(read_labels(lab), zoom, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        write_labels(out / "labels" / f"{name}.tif", y)
    table = rows.assign(image=[f"images/{n}.tif" for n in names], label=[f"labels/{n}.tif" for n in names])
    table["median_object_diameter_px"] = table["median_object_diameter_px"] * zoom
    table.to_csv(manifest.with_suffix(".tmp"), index=False)  # the manifest last, whole: it marks a finished copy
    manifest.with_suffix(".tmp").replace(manifest)
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--zooms", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--modes", nargs="+", default=["native", "auto"], choices=("native", "auto"))
    ap.add_argument("--work", default="/tmp/unetflow_zoom", help="where the zoomed copies are kept")
    args = ap.parse_args()

    from unetflow.evaluate import evaluate_run, tune_thresholds
    from unetflow.predict import load_run

    rows = []
    for run_dir in args.runs:
        run = load_run(run_dir)
        if not (run.dir / run.dir.THRESHOLDS).is_file():  # tuned on the run's own val split, as evaluate does
            tune_thresholds(run)
        for zoom in args.zooms:
            manifest = zoomed_copy(run, args.split, zoom, Path(args.work))
            for mode in args.modes:
                s = evaluate_run(run_dir, args.split, manifest=manifest, data_root=manifest.parent, diameter=mode,
                                 tag=f"zoom{zoom:g}", tune=True)
                est = s.get("diameter_estimate", {})
                t = s["timing"]
                rows.append([Path(run_dir).name, f"{zoom:g}", mode, f"{s['ap50']:.3f}", f"{s['ap75']:.3f}",
                             f"{est['median_relative_error']:.1%}" if est else "-",
                             f"{t['size_estimation_s_per_mpx']:.2f}" if mode == "auto" else "-",
                             f"{t['network_s_per_mpx']:.2f}", f"{t['megapixels']:.1f}"])
                print(json.dumps({"run": run_dir, "zoom": zoom, "mode": mode, "ap50": s["ap50"], "ap75": s["ap75"],
                                  "ap90": s["ap90"], "diameter_error": est.get("median_relative_error"),
                                  "by_modality": {k: v["ap50"] for k, v in s.get("by_modality", {}).items()},
                                  "timing": t}), flush=True)
    print_table(["run", "zoom", "sizing", "AP@0.5", "AP@0.75", "diameter error (median)", "size s/Mpx",
                 "network s/Mpx", "Mpx (input)"], rows)


if __name__ == "__main__":
    main()
