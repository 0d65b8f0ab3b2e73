"""Inference cost on this machine: seconds per megapixel for the network and the post-processing.

    python benchmarks/bench_inference.py RUN_DIR [RUN_DIR ...] [--split test] [--limit 30] [--tile-size 512]

For each run, on the first ``--limit`` images of the split (from the run's manifest): the tiled
network pass and the run's post-processing (flow following + flow check, or the boundary recipe),
timed separately, so a user can plan a large job.  The first image is a warm-up.
"""
from __future__ import annotations

import argparse
import time


from common import print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--tile-size", type=int, default=512)
    args = ap.parse_args()

    from unetflow.evaluate import _split_files
    from unetflow.io import read_image
    from unetflow.predict import load_run, predict_raw, raw_to_labels
    from unetflow.preprocess import prepare_image

    rows = []
    for run_dir in args.runs:
        run = load_run(run_dir)
        images = _split_files(run, args.split)[0][: args.limit + 1]
        config = run.postprocess_config()
        t_net = t_post = mpx = 0.0
        for k, path in enumerate(images):
            x = prepare_image(read_image(path), run.config.input)
            t0 = time.perf_counter()
            raw = predict_raw(run.model, x, task=run.task, tile_size=args.tile_size)
            t1 = time.perf_counter()
            raw_to_labels(raw, run.task, config)
            t2 = time.perf_counter()
            if k:  # the first image warms up TensorFlow and numba
                t_net += t1 - t0
                t_post += t2 - t1
                mpx += x.shape[0] * x.shape[1] / 1e6
        rows.append([f"{run.path.name} ({run.task})", len(images) - 1, f"{mpx:.2f}", f"{t_net / mpx:.2f}",
                     f"{t_post / mpx:.2f}", f"{(t_net + t_post) / mpx:.2f}"])
    print(f"\ninference on the {args.split} split, tiles of {args.tile_size}², 2 CPU cores\n")
    print_table(["run", "images", "Mpx", "network s/Mpx", "post-processing s/Mpx", "total s/Mpx"], rows)


if __name__ == "__main__":
    main()
