"""Round trip labels -> flows -> masks on label images or volumes, beside Cellpose's compute_masks.

    python benchmarks/bench_roundtrip.py [--data DIR] [--limit N] \
        [--cellpose3 /opt/ref/cp3/bin/python] [--cellpose4 /opt/ref/cp4/bin/python] [--worst 10]

For each label image: flows from unetflow's ``masks_to_flows``, then ``compute_masks`` with
``dP = 5 * flows`` and cellprob +10 inside / -10 outside (defaults: flow check 0.4, min_size 15).
Cellpose's ``compute_masks`` gets the very same dP and cellprob in its own venv.  Prints AP at
IoU 0.5 / 0.75 / 0.9 over the set (counts summed over images) against the original labels, and ms
per image; then the images whose objects round-trip worst at IoU 0.9, with the reason.

``(Z, Y, X)`` label volumes (e.g. ``--data ../shared/data/gonuclear_mini``) are followed in 3-D
with every cell voxel followed and no flow check (Cellpose's check is 2-D only), by
nearest-neighbour and by trilinear steps; Cellpose gets ``do_3D=True``.
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
    from unetflow.metrics import matching_dataset
    from unetflow.postprocess import compute_masks

    files = label_files(data_root(args.data), args.limit)
    labels = [tifffile.imread(f).astype(np.int32) for f in files]
    flows = [masks_to_flows(lab) for lab in labels]
    n_obj = sum(int(lab.max()) for lab in labels)

    def cellprob(lab):
        return np.where(lab > 0, 10.0, -10.0).astype(np.float32)

    rows = []
    volumes = labels[0].ndim == 3
    variants = [("unetflow 3-D, nearest steps", {"follow": "cellprob", "flow_threshold": 0.0}),
                ("unetflow 3-D, trilinear steps", {"follow": "cellprob", "flow_threshold": 0.0, "interp": True})
                ] if volumes else [("unetflow defaults (seed)", {}), ("unetflow interp=True", {"interp": True}),
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
            dP, prob = 5 * fl, cellprob(lab)  # inputs made outside the timing, as the Cellpose worker does
            t0 = time.perf_counter()
            preds.append(compute_masks(dP, prob, **opts))
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
    kind = "label volumes" if volumes else "label images"
    print(f"\nround trip on {len(files)} {kind} ({n_obj} objects), 2 cores\n")
    print_table(["implementation", "AP@0.5", "AP@0.75", "AP@0.9", "ms/image", "time relative to unetflow"], table)

    for name, opts in [variants[0], variants[-1]] if args.worst else []:
        reasons, per = {}, []
        for f, lab, fl in zip(files, labels, flows):
            why = miss_reasons(lab, fl, opts)
            for r in why.values():
                reasons[r] = reasons.get(r, 0) + 1
            per.append((len(why), f.name[:12], int(lab.max()), ", ".join(sorted(set(why.values())))))
        per.sort(reverse=True)
        print(f"\nwhy objects are missed at IoU 0.9 ({name}), over the set: "
              + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
        print_table(["image", "objects", "missed@0.9", "reasons"], [[n, o, k, r] for k, n, o, r in per[: args.worst]])


def miss_reasons(labels, flows, opts):
    """For each true object missed at IoU 0.9: why (too small, no seed, split, flow check, IoU < 0.9)."""
    from unetflow.postprocess import PostprocessConfig, finish_masks, masks_before_checks
    from unetflow.viz import per_object_iou

    cfg = PostprocessConfig(**opts)
    before, diag = masks_before_checks(5 * flows, np.where(labels > 0, 10.0, -10.0), cfg)
    final = finish_masks(before, diag, cfg)
    iou = per_object_iou(labels, final, 0.9)
    ids = np.unique(labels)[1:]
    areas = np.bincount(labels.ravel())[ids]
    out = {}
    for k in np.flatnonzero(iou == 0):
        hit = np.unique(before[labels == ids[k]])
        hit = hit[hit > 0]
        out[k] = ("under min_size" if areas[k] < cfg.min_size else "no seed" if hit.size == 0 else
                  "split" if hit.size > 1 else "flow check" if np.isin(hit, diag["removed_by_flow_check"]).any()
                  else "IoU < 0.9")
    return out


if __name__ == "__main__":
    main()
