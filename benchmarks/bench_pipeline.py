"""Is the input pipeline the bottleneck?  Batches/s of the pipeline alone vs training steps/s.

    python benchmarks/bench_pipeline.py [experiments/dsb2018_flow.yaml] [--set key=value ...] \
        [--batches 30] [--steps 10]

Loads the config's training data (targets from the cache), then times (1) drawing batches from
the tf.data pipeline alone and (2) training steps of the config's model on pre-drawn batches, and
prints both with their ratio.  A ratio well above 1 means the model, not the pipeline, sets the pace.
"""
from __future__ import annotations

import argparse
import time

from common import print_table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from unetflow.config import load_config
    from unetflow.pipeline import load_training_data, make_dataset
    from unetflow.precompute import TargetCache, cache_env_default
    from unetflow.hardware import resolve_mixed_precision
    from unetflow.tasks import get_task
    from unetflow.train import _optimizer, build_model, resolve_data

    cfg = load_config(args.config, args.set)
    t = cfg.train
    data = resolve_data(cfg)
    imgs, labs, names = data.splits["train"]
    train = load_training_data(imgs, labs, TargetCache(cfg.data.cache or cache_env_default()), cfg.input, names)
    ds = make_dataset(train, cfg.model.task, cfg.augment, batch_size=t.batch_size, seed=t.seed)
    it = iter(ds)
    next(it)
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(args.batches)]
    pipe = args.batches / (time.perf_counter() - t0)

    rows = []
    precision = resolve_mixed_precision(t.mixed_precision)
    for policy in [None, precision] if precision else [None]:
        keras.mixed_precision.set_global_policy(policy or "float32")
        model = build_model(cfg)
        task = get_task(cfg.model.task)
        model.compile(optimizer=_optimizer(t, 1000), loss=task.loss(cfg.loss), metrics=task.metrics())
        x, y = batches[0]
        model.train_on_batch(x, y)  # build and trace
        t0 = time.perf_counter()
        for k in range(args.steps):
            model.train_on_batch(*batches[k % len(batches)])
        steps = args.steps / (time.perf_counter() - t0)
        rows.append([f"{cfg.model.task} U-Net, {cfg.model.base_filters} filters, depth {cfg.model.depth}, "
                     f"{policy or 'float32'}", f"{t.batch_size} x {cfg.augment.crop_size}²",
                     f"{pipe:.2f}", f"{steps:.3f}", f"{1 / steps:.2f}", f"{pipe / steps:.1f}"])
    print(f"\npipeline vs model on {len(train)} training images, TensorFlow {tf.__version__}, "
          f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'} inter-op threads\n")
    print_table(["model", "batch", "pipeline batches/s", "train steps/s", "s/step", "ratio (pipeline/model)"], rows)


if __name__ == "__main__":
    main()
