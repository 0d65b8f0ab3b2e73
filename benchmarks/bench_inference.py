"""Inference cost on this machine: the network inside ``predict`` against its bare forward pass and
the CPU's matmul peak, and the post-processing against Cellpose 3's on the same outputs.

    python benchmarks/bench_inference.py RUN_DIR [RUN_DIR ...] [--split test] [--limit 30]
        [--tile-size 1024] [--precision auto] [--cellpose3 /opt/ref/cp3/bin/python]

Tables, in one run:

1. the machine: CPU flags that matter, and the matmul peak (GFLOP/s) in float32 and bfloat16;
2. per run, on the first ``--limit`` images of the split (read beforehand): seconds per megapixel of
   the network inside ``predict`` (all images streamed through ``predict_raw_many`` as ``evaluate``
   does: tiling, padding, batching and blending included) and of the post-processing, and the
   GFLOP/s the network achieves there;
3. per run: the bare forward pass, one batch of 8 x 256² through a ``tf.function``, in s/Mpx and
   GFLOP/s, and the ratio predict / bare (the target is <= 1.2); the same pass in the other
   precision (float32 or bfloat16) beside it;
4. with ``--cellpose3``, for flow runs: ``compute_masks`` (the run's mode and thresholds) and Cellpose
   3's ``dynamics.compute_masks`` on the very same network outputs, ms per image, and AP@0.5 of both.

The first image of each run is a warm-up.  Run it on an idle machine: other jobs on the same cores
change every number (ratios less).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import print_table, run_reference
from unetflow.conventions import DEFAULT_TILE


def conv_flops_per_pixel(model) -> float:
    """Multiply-adds x 2 of every convolution, per input pixel (a level-L layer runs on 4^-L of
    the pixels: unetflow's layers are named ``down<L>_...``, ``up<L>_...``, the head at level 0)."""
    import re

    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            cin, cout = layer.input.shape[-1], layer.filters
            m = re.match(r"(?:down|up)(\d+)_", layer.name)
            level = int(m.group(1)) if m else 0
            total += 2 * k * cin * cout / 4 ** level
    return total


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).numpy()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def bare_forward(model, batch: int = 8, side: int = 256, repeats: int = 3) -> float:
    """Seconds per megapixel of one batch through a compiled forward pass."""
    import tensorflow as tf

    x = tf.random.uniform((batch, side, side, model.inputs[0].shape[-1]))
    f = tf.function(lambda t: model(t, training=False))
    f(x).numpy()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(x).numpy()
    return (time.perf_counter() - t0) / repeats / (batch * side * side / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--tile-size", type=int, default=DEFAULT_TILE)
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--cellpose3", help="python of a venv with cellpose 3.x: compare the post-processing")
    args = ap.parse_args()

    from unetflow.evaluate import split_files
    from unetflow.hardware import cpu_flags, import_tensorflow, inference_policy
    from unetflow.io import read_image, read_labels
    from unetflow.metrics import matching_dataset
    from unetflow.predict import load_run, predict_raw, predict_raw_many, raw_to_labels
    from unetflow.preprocess import prepare_image
    from unetflow.tasks.flow import split_flow_outputs

    import_tensorflow()  # without its start-up lines
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    print(f"\nCPU flags: {' '.join(flags)}; inference precision {args.precision} -> "
          f"{inference_policy(args.precision)}\n")
    print_table(["matmul 2048³", "float32 GFLOP/s", "bfloat16 GFLOP/s"],
                [["peak (2 cores)", f"{matmul_peak('float32'):.0f}", f"{matmul_peak('bfloat16'):.0f}"]])

    rows, bare_rows, post_rows = [], [], []
    for run_dir in args.runs:
        run = load_run(run_dir, precision=args.precision)
        images, labels = (files[: args.limit + 1] for files in split_files(run, args.split)[:2])
        config = run.postprocess_config()
        flops = conv_flops_per_pixel(run.model)
        # images read and prepared outside the timing; the first one warms up TensorFlow and numba
        xs = [prepare_image(read_image(path), run.config.input) for path in images]
        raw = predict_raw(run.model, xs[0], task=run.task, tile_size=args.tile_size)
        raw_to_labels(raw, run.task, config)
        xs = xs[1:]
        truths = [read_labels(lab) for lab in labels[1:]]
        mpx = sum(x.shape[0] * x.shape[1] for x in xs) / 1e6
        t0 = time.perf_counter()  # the network inside predict: all images streamed, as evaluate does
        raws = list(predict_raw_many(run.model, [(x, 1.0) for x in xs], task=run.task, tile_size=args.tile_size))
        t_net = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = [raw_to_labels(raw, run.task, config) for raw in raws]
        t_post = time.perf_counter() - t0
        name = f"{run.path.name} ({run.task})"
        rows.append([name, len(xs), f"{mpx:.2f}", f"{t_net / mpx:.2f}", f"{flops * 1e6 * mpx / t_net / 1e9:.0f}",
                     f"{t_post / mpx:.2f}", f"{(t_net + t_post) / mpx:.2f}"])
        bare = bare_forward(run.model)
        others = {}  # the same pass in the other precisions, for reference
        for precision in ("float32", "bfloat16"):
            if inference_policy(precision) != inference_policy(args.precision):
                others[precision] = bare_forward(load_run(run_dir, precision=precision).model)
        bare_rows.append([name, f"{flops / 1e3:.0f}", f"{bare:.2f}", f"{flops * 1e6 / bare / 1e9:.0f}",
                          f"{t_net / mpx / bare:.2f}",
                          "; ".join(f"{k} {v:.2f} s/Mpx, {flops * 1e6 / v / 1e9:.0f} GFLOP/s" for k, v in others.items())])
        if args.cellpose3 and run.task == "flow":
            with tempfile.TemporaryDirectory() as tmp:
                files = []
                for k, raw in enumerate(raws):
                    dP, cellprob = split_flow_outputs(raw)
                    f = Path(tmp) / f"r{k}.npz"
                    np.savez(f, dP=dP, cellprob=cellprob, flow_threshold=config.flow_threshold or 0.0,
                             cellprob_threshold=config.cellprob_threshold, min_size=config.min_size)
                    files.append(f)
                ref = run_reference(args.cellpose3, "masks", files)
            ours = t_post / len(raws) * 1e3
            theirs = float(np.mean(ref["times"])) * 1e3
            cp = [ref[f"m{k}"] for k in range(len(raws))]
            post_rows.append([name, len(raws), f"{ours:.0f}", f"{theirs:.0f}", f"{theirs / ours:.1f}x",
                              f"{matching_dataset(truths, preds, [0.5])[0].ap:.3f}",
                              f"{matching_dataset(truths, cp, [0.5])[0].ap:.3f}"])

    print(f"\ninference on the {args.split} split, tiles up to {args.tile_size}², precision {args.precision}\n")
    print_table(["run", "images", "Mpx", "network s/Mpx", "network GFLOP/s", "post-processing s/Mpx", "total s/Mpx"],
                rows)
    print("\nbare forward pass, one batch of 8 x 256² through a tf.function\n")
    print_table(["run", "kFLOP/px", "bare s/Mpx", "bare GFLOP/s", "predict / bare", "bare, other precision"],
                bare_rows)
    if post_rows:
        print("\npost-processing on the same network outputs: unetflow compute_masks (the run's mode) vs Cellpose "
              "3 dynamics.compute_masks (niter 200, the run's thresholds)\n")
        print_table(["run", "images", "unetflow ms/img", "Cellpose 3 ms/img", "speed-up", "AP@0.5 unetflow",
                     "AP@0.5 Cellpose 3"], post_rows)


if __name__ == "__main__":
    main()
