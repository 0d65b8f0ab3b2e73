"""Runs inside a reference implementation's own virtual environment (cellpose 3 or 4).

Not part of unetflow and never imported by it: the benchmarks start it with the reference's
Python, hand it label files, and read back timings and results.  Usage:

    python _reference_worker.py flows LIST.txt OUT.npz
    python _reference_worker.py roundtrip LIST.txt OUT.npz
    python _reference_worker.py masks LIST.txt OUT.npz

``flows``: cellpose's ``dynamics.masks_to_flows`` per label file.  ``roundtrip``: cellpose's
``dynamics.compute_masks`` on ``dP = 5 * flows`` (flows from unetflow, passed in the list as .npz
files holding ``labels`` and ``flows``) with cellprob +10 inside / -10 outside (``do_3D`` for
``(Z, Y, X)`` labels).  ``masks``:
``dynamics.compute_masks`` on a network's own outputs (.npz files holding ``dP``, ``cellprob``,
``flow_threshold``, ``cellprob_threshold`` and ``min_size``).
"""
import sys
import time

import numpy as np
import tifffile


def main():
    mode, listfile, out = sys.argv[1:4]
    import torch
    torch.set_num_threads(2)
    from cellpose import dynamics
    files = [line.strip() for line in open(listfile) if line.strip()]
    times, results = [], {}
    for k, f in enumerate(files):
        if mode == "flows":
            labels = tifffile.imread(f).astype(np.int32)
            if k == 0:
                dynamics.masks_to_flows(labels)  # warm-up: numba compilation
            t0 = time.perf_counter()
            flows = dynamics.masks_to_flows(labels)
            times.append(time.perf_counter() - t0)
            results[f"f{k}"] = np.asarray(flows, np.float32)
        else:
            z = np.load(f)
            if mode == "masks":
                dP, cellprob = z["dP"], z["cellprob"]
                opts = dict(niter=200, flow_threshold=float(z["flow_threshold"]),
                            cellprob_threshold=float(z["cellprob_threshold"]), min_size=int(z["min_size"]))
            else:
                labels, flows = z["labels"], z["flows"]
                cellprob = np.where(labels > 0, 10.0, -10.0).astype(np.float32)
                dP = 5.0 * flows
                # the defaults of each version, but min_size 15 (cellpose 3 defaults to -1: no filling)
                opts = dict(niter=200, flow_threshold=0.4, min_size=15)
                if labels.ndim == 3:  # Cellpose's do_3D masks, whose flow check is 2-D only
                    opts.update(do_3D=True, flow_threshold=0.0)
            if k == 0:
                dynamics.compute_masks(dP, cellprob, **opts)
            t0 = time.perf_counter()
            masks = dynamics.compute_masks(dP, cellprob, **opts)
            times.append(time.perf_counter() - t0)
            masks = masks[0] if isinstance(masks, tuple) else masks
            results[f"m{k}"] = np.asarray(masks, np.int32)
    import cellpose
    version = getattr(cellpose, "version", "?")
    np.savez_compressed(out, times=np.array(times), version=np.array(str(version)), **results)


if __name__ == "__main__":
    main()
