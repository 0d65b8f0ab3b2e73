"""The ``unetflow`` command line: thin subcommands over the library.

TensorFlow is imported only inside the subcommands that build or run models, so ``unetflow
--help`` and ``unetflow precompute`` start fast.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__


def _precompute(args) -> int:
    from .manifest import read_manifest
    from .precompute import TargetParams, cache_env_default, precompute

    manifest = read_manifest(args.manifest, args.data)
    cache = Path(args.cache) if args.cache else cache_env_default()
    params = TargetParams(boundary_width=args.boundary_width)
    labels = [manifest.label_path(i) for i in range(len(manifest))]
    summary = precompute(labels, cache, params, workers=args.workers, shard=args.shard)
    print(summary)
    print(f"targets cached in {cache.resolve()}")
    return 1 if summary.failed else 0


def _train(args) -> int:
    from .train import run_experiment

    if args.resume and args.config:
        raise ValueError("give either an experiment config or --resume RUN_DIR, not both "
                         "(a resumed run keeps its own config)")
    if not args.resume and not args.config:
        raise ValueError("give an experiment config (e.g. experiments/flow_unet.yaml) or --resume RUN_DIR")
    run_dir = run_experiment(args.config, overrides=args.set or (), run_dir=args.run_dir, resume=args.resume)
    print(f"run directory: {Path(run_dir).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetflow", description="U-Net instance segmentation of cells and nuclei with boundary or flow labels")
    parser.add_argument("--version", action="version", version=f"unetflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("precompute", help="compute flow and boundary targets into the cache")
    p.add_argument("manifest", nargs="?", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    p.add_argument("--data", help="data root the manifest's paths are relative to (default: $UNETFLOW_DATA "
                                  "or the manifest's folder)")
    p.add_argument("--cache", help="cache folder (default: $UNETFLOW_CACHE or ~/.cache/unetflow/targets)")
    p.add_argument("--workers", type=int, default=1, help="processes (default: %(default)s)")
    p.add_argument("--shard", help="i/n: only the i-th of n shards (for cluster array jobs)")
    p.add_argument("--boundary-width", type=int, default=1, help="boundary band per side, px (default: 1)")
    p.set_defaults(func=_precompute)

    p = sub.add_parser("train", help="train a model from an experiment config")
    p.add_argument("config", nargs="?", help="experiment YAML (e.g. experiments/flow_unet.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default: OUTPUT_DIR/NAME, time-stamped if it exists)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    p.set_defaults(func=_train)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        print(f"unetflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. TrainingDivergedError: the message says what was kept
        print(f"unetflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"unetflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
