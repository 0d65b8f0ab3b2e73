"""Speed of ``unetflow.flows.masks_to_flows`` on the DSB label images, beside Cellpose's.

    python benchmarks/bench_flows.py [--data DIR] [--limit N] \
        [--cellpose3 /opt/ref/cp3/bin/python] [--reference-limit N]

Prints a table: ms per image, Mpx/s, the ratio to Cellpose 3's ``masks_to_flows`` (its numba CPU
path, run in its own virtual environment on the same files), and the largest deviation from the
seed's code (the transcription in tests/seed_reference.py) over the first ``--reference-limit``
images.  The first call of each implementation is a warm-up (numba compilation) and not timed.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile

from common import REPO, data_root, label_files, print_table, run_reference

sys.path.insert(0, str(REPO / "tests"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--cellpose3", help="python of a venv with cellpose 3.x")
    ap.add_argument("--reference-limit", type=int, default=100,
                    help="images compared with the (slow) seed code (default %(default)s)")
    args = ap.parse_args()

    from unetflow.flows import masks_to_flows
    import seed_reference

    files = label_files(data_root(args.data), args.limit)
    labels = [tifffile.imread(f).astype(np.int32) for f in files]
    npx = sum(lab.size for lab in labels)
    masks_to_flows(labels[0])  # warm-up
    times, ours = [], []
    for lab in labels:
        t0 = time.perf_counter()
        ours.append(masks_to_flows(lab))
        times.append(time.perf_counter() - t0)
    times = np.array(times)

    dev = 0.0
    nref = min(args.reference_limit, len(labels))
    for lab, f in zip(labels[:nref], ours[:nref]):
        dev = max(dev, float(np.abs(seed_reference.masks_to_flows(lab)[0] - f).max()))

    rows = [["unetflow", len(files), f"{1000 * times.mean():.1f}", f"{npx / times.sum() / 1e6:.2f}", "1.00",
             f"{dev:.1e} (first {nref})"]]
    ref = run_reference(args.cellpose3, "flows", files)
    if ref is not None:
        rt = ref["times"]
        cos = []
        for k, f in enumerate(ours):
            a, b = f, ref[f"f{k}"]
            inside = labels[k] > 0
            cos.append(float(np.mean((a * b).sum(0)[inside])))
        rows.append([f"cellpose {ref['version']}", len(files), f"{1000 * rt.mean():.1f}",
                     f"{npx / rt.sum() / 1e6:.2f}", f"{rt.sum() / times.sum():.2f}",
                     f"mean cosine to ours {np.mean(cos):.3f} (a different algorithm)"])
    print(f"\nmasks_to_flows on {len(files)} DSB label images ({npx / 1e6:.1f} Mpx), 2 cores\n")
    print_table(["implementation", "images", "ms/image", "Mpx/s", "speed-up of unetflow", "deviation from seed code"],
                rows)


if __name__ == "__main__":
    main()
