"""How many images must a user annotate?  A learning curve: configs trained on the first N training images.

    UNETFLOW_DATA=../shared/data/aitslab_nuclei python benchmarks/learning_curve.py \
        experiments/aitslab_nuclei_flow_finetune.yaml experiments/aitslab_nuclei_flow.yaml \
        experiments/aitslab_nuclei_boundary.yaml --sizes 3 10 all --seeds 0 1 --out runs/curve_nuclei \
        [--set train.epochs=3 ...] [--plot docs/results/learning_curve_nuclei.png]

For each config, number of images N (``data.max_train_images``: the first N of the train split, in
manifest order; ``all``: every one) and seed (``train.seed``: initial weights and crops), a run is
trained into ``OUT/<config>_n<N>_s<seed>`` and scored on the val split with ``unetflow evaluate``
(thresholds tuned on val).  A run directory that already holds a val evaluation is reused, so the
curve can be extended or resumed, and runs trained by hand can be placed there under the same name.
``--set`` overrides apply to every run (for example a shorter schedule for the small N), and the
wall time of each training is printed; ``--no-train`` reports only the points already evaluated.
Prints one row per (config, N): AP at IoU 0.5 / 0.75 / 0.9 as mean and, with several seeds,
standard deviation and range; ``--plot`` draws AP@0.5 against N.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import print_table

KEYS = ("ap50", "ap75", "ap90")


def run_point(config: Path, n: str, seed: int, out: Path, overrides, train: bool = True):
    """Train (unless done) and evaluate one point; return its run directory and training seconds
    (None when reused), or None when the point is not done and `train` is False."""
    run = out / f"{config.stem}_n{n}_s{seed}"
    seconds = None
    if not (run / "eval_val" / "summary.json").is_file():
        if not train:
            return None
        sets = [f"train.seed={seed}"] + ([] if n == "all" else [f"data.max_train_images={n}"]) + list(overrides)
        cmd = [sys.executable, "-m", "unetflow.cli", "train", str(config), "--run-dir", str(run)]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ)
        seconds = time.perf_counter() - t0
        subprocess.run([sys.executable, "-m", "unetflow.cli", "evaluate", str(run), "--split", "val"], check=True)
    return run, seconds


def train_images(run: Path, n: str) -> int:
    """How many images the point trained on: N, or the size of its manifest's train split."""
    if n != "all":
        return int(n)
    import pandas as pd

    meta = json.loads((run / "meta.json").read_text())
    return int((pd.read_csv(meta["manifest"])["split"] == "train").sum())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--sizes", nargs="+", default=["3", "10", "all"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--plot", type=Path, help="write AP@0.5 against the number of images to this PNG")
    p.add_argument("--no-train", action="store_true", help="report the points already evaluated, train nothing")
    args = p.parse_args()
    for n in args.sizes:
        if n != "all" and not (n.isdigit() and int(n) > 0):
            sys.exit(f"--sizes: {n!r} is neither a positive number of images nor 'all'")

    rows, curves = [], {}
    for config in args.configs:
        for n in args.sizes:
            scores, times = [], []
            for seed in args.seeds:
                point = run_point(config, n, seed, args.out, args.set, train=not args.no_train)
                if point is None:
                    continue
                run, seconds = point
                summary = json.loads((run / "eval_val" / "summary.json").read_text())
                scores.append([summary[k] for k in KEYS])
                times.append(seconds)
            if not scores:
                print(f"(not done: {config.stem} at {n} images)", file=sys.stderr)
                continue
            n_images = train_images(run, n)
            scores = np.array(scores)
            mean = scores.mean(0)
            spread = [f"{m:.3f} ± {s:.3f} [{lo:.3f}, {hi:.3f}]" if len(scores) > 1 else f"{m:.3f}"
                      for m, s, lo, hi in zip(mean, scores.std(0, ddof=1) if len(scores) > 1 else mean,
                                              scores.min(0), scores.max(0))]
            took = [t for t in times if t is not None]
            rows.append([config.stem, n_images, len(scores), *spread,
                         f"{np.mean(took) / 60:.1f}" if took else "(reused)"])
            curves.setdefault(config.stem, []).append((n_images, mean[0], scores[:, 0]))
    print_table(["config", "images", "seeds", "AP@0.5", "AP@0.75", "AP@0.9", "train min"], rows)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, points in curves.items():
            xs = [x for x, _, _ in points]
            ax.plot(xs, [m for _, m, _ in points], "o-", label=name)
            for x, _, each in points:
                ax.plot([x] * len(each), each, ".", color=ax.lines[-1].get_color(), alpha=0.5)
        ax.set_xscale("log")
        ticks = sorted({x for points in curves.values() for x, _, _ in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])  # the numbers of images, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel("training images")
        ax.set_ylabel("AP@0.5 on val")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=90, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
