"""Round trip labels -> flows -> masks on the DSB label images, beside Cellpose's compute_masks.

    python benchmarks/bench_roundtrip.py [--data DIR] [--limit N] \
        [--cellpose3 /opt/ref/cp3/bin/python] [--cellpose4 /opt/ref/cp4/bin/python] [--worst 10]

For each label image: flows from unetflow's ``masks_to_flows``, then ``compute_masks`` with
``dP = 5 * flows`` and cellprob +10 inside / -10 outside (defaults: flow check 0.4, min_size 15).
Cellpose's ``compute_masks`` gets the very same dP and cellprob in its own venv.  Prints AP at
IoU 0.5 / 0.75 / 0.9 over the set (counts summed over images) against the original labels, and ms
per image; then the images whose objects round-trip worst at IoU 0.9, with the reason.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from common import data_root, label_files, print_table, run_reference

THRESHOLDS = [0.5, 0.75, 0.9]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--cellpose3")
    ap.add_argument("--cellpose4")
    ap.add_argument("--worst", type=int, default=8, help="list the N images with the most misses at IoU 0.9")
    args = ap.parse_args()

    from unetflow.flows import masks_to_flows
    from unetflow.metrics import matching, matching_dataset
    from unetflow.postprocess import compute_masks

    files = label_files(data_root(args.data), args.limit)
    labels = [tifffile.imread(f).astype(np.int32) for f in files]
    flows = [masks_to_flows(lab) for lab in labels]
    n_obj = sum(int(lab.max()) for lab in labels)

    def cellprob(lab):
        return np.where(lab > 0, 10.0, -10.0).astype(np.float32)

    rows, worst_of = [], {}
    variants = [("unetflow defaults (seed)", {}), ("unetflow interp=True", {"interp": True}),
                ("unetflow follow=cellprob", {"follow": "cellprob"}),
                ("unetflow follow=cellprob, interp=True", {"follow": "cellprob", "interp": True}),
                # the seed's flows move more than Cellpose's when a small mask gains or loses a pixel,
                # so Cellpose's flow threshold (0.4) drops some correct small masks
                ("unetflow follow=cellprob, interp=True, flow_threshold=0.6",
                 {"follow": "cellprob", "interp": True, "flow_threshold": 0.6})]
    for name, opts in variants:
        compute_masks(5 * flows[0], cellprob(labels[0]), **opts)  # warm-up: numba compilation
        times, preds = [], []
        for lab, fl in zip(labels, flows):
            t0 = time.perf_counter()
            preds.append(compute_masks(5 * fl, cellprob(lab), **opts))
            times.append(time.perf_counter() - t0)
        rows.append((name, preds, np.array(times)))

    with tempfile.TemporaryDirectory() as tmp:
        npz = []
        for k, (lab, fl) in enumerate(zip(labels, flows)):
            npz.append(Path(tmp) / f"{k}.npz")
            np.savez(npz[-1], labels=lab, flows=fl)
        for python in (args.cellpose3, args.cellpose4):
            ref = run_reference(python, "roundtrip", npz)
            if ref is not None:
                rows.append((f"cellpose {ref['version']}", [ref[f"m{k}"] for k in range(len(labels))], ref["times"]))

    table = []
    base = rows[0][2].sum()
    for name, preds, times in rows:
        ms = matching_dataset(labels, [p.astype(np.int32) for p in preds], THRESHOLDS)
        table.append([name] + [f"{m.ap:.4f}" for m in ms] + [f"{1000 * times.mean():.1f}", f"{times.sum() / base:.2f}"])
    print(f"\nround trip on {len(files)} DSB label images ({n_obj} objects), 2 cores\n")
    print_table(["implementation", "AP@0.5", "AP@0.75", "AP@0.9", "ms/image", "time relative to unetflow"], table)

    if args.worst:
        preds = rows[-1 - sum(1 for r in rows if r[0].startswith("cellpose"))][1]
        per = []
        for f, lab, p in zip(files, labels, preds):
            m = matching(lab, p, 0.9)
            per.append((m.fn, f.name[:12], int(lab.max()), m.tp, m.fp))
        per.sort(reverse=True)
        print(f"\nimages with the most objects missed at IoU 0.9 ({variants[-1][0]}):\n")
        print_table(["image", "objects", "tp@0.9", "fp@0.9", "fn@0.9"],
                    [[n, o, tp, fp, fn] for fn, n, o, tp, fp in per[: args.worst]])


if __name__ == "__main__":
    main()
