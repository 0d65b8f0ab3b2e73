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
from .conventions import DEFAULT_TILE, SPLITS, VOLUME_TILE
from .folders import SPLIT_MODES
from .formats import FORMATS
from .hardware import INFERENCE_PRECISIONS, import_tensorflow
from .rundir import pretrained
from .tasks import TASKS


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
    import json
    overrides = [*(args.set or ()), *([f"train.init_from={json.dumps(str(args.init_from))}"] if args.init_from else [])]
    run_dir = run_experiment(args.config, overrides=overrides, run_dir=args.run_dir, resume=args.resume)
    print(f"run directory: {Path(run_dir).resolve()}")
    return 0


def _predict(args) -> int:
    from .formats import write_outputs
    from .io import write_image
    from .manifest import read_manifest
    from .predict import check_tile_size, load_run, segment_images
    from .sizing import check_diameter

    diameter = check_diameter(args.diameter)  # before any work: a bad value is the user's error, not an image's
    if args.model:  # every positional is an image
        if args.model not in pretrained():
            raise ValueError(f"--model {args.model}: no such ready model (installed: {', '.join(pretrained()) or 'none'})")
        args.images, args.run_dir = [p for p in (args.run_dir, *args.images) if p], args.model
    elif not args.run_dir:
        raise ValueError("give a run directory or --model NAME")
    if args.out.rstrip("/").endswith(".zarr"):
        return _predict_big(args, diameter)

    images = [Path(p) for p in args.images]
    if args.manifest:
        m = read_manifest(args.manifest, args.data)
        m = m.split(args.split) if args.split else m
        images += [m.image_path(i) for i in range(len(m))]
    if not images:
        raise ValueError("no images: give image files or --manifest M [--split S]")
    run = load_run(args.run_dir, precision=args.precision)
    if args.tile_size is not None:  # the user's error, before any image is read
        check_tile_size(args.tile_size, run.input_multiple)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(_parse_kv(kv) for kv in args.postprocess or ())
    if args.three_d:
        return _predict_volumes(run, images, out, args, diameter, overrides)
    run.require_images()
    from .progress import progress_bar
    failed = []
    results = segment_images(run, images, tile_size=args.tile_size or DEFAULT_TILE, tta=args.tta, diameter=diameter, **overrides)
    for path, *result in progress_bar(results, total=len(images), desc="segment", unit="img"):
        if isinstance(result[0], Exception):  # one bad image must not stop the others
            failed.append(f"{path}: {result[0]}")
            continue
        labels, raw = result
        write_outputs(out, path.stem, labels, raw, args.formats, filename=path.resolve())
        if args.save_raw:
            for key, arr in ((k, v) for k, v in raw.items() if k != "diameter"):
                write_image(out / f"{path.stem}_{key}.tif", arr.astype("float32"))
    print(f"segmented {len(images) - len(failed)} image(s) into {out.resolve()}")
    for f in failed:
        print(f"  FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


def _predict_volumes(run, images, out, args, diameter, overrides) -> int:
    """``predict --3d``: each file a (Z, Y, X) stack, its labels a TIFF stack and/or an OME-Zarr label
    image with the voxel size kept."""
    from .formats import write_ome_zarr_labels
    from .io import anisotropy_of, read_volume, write_volume_labels
    from .volume import predict_volume

    if args.anisotropy is not None and not args.anisotropy > 0:
        raise ValueError(f"--anisotropy must be a positive number (z voxel size / y-x voxel size), got {args.anisotropy}")
    flat = sorted(set(args.formats) - {"labels", "ome-zarr"})
    if flat:
        raise ValueError(f"--formats {' '.join(flat)}: 2-D formats; a volume's labels are written as labels "
                         "(a TIFF stack) or ome-zarr")
    failed = []
    for path in images:
        try:
            volume, voxel = read_volume(path)
            aniso = args.anisotropy or anisotropy_of(voxel)
            if aniso is None:
                logging.getLogger("unetflow").warning("%s: no voxel size in the file and no --anisotropy: "
                                                      "treated as isotropic", path)
            labels, info = predict_volume(run, volume, anisotropy=aniso, diameter=diameter, **_volume_mode(args),
                                          tile_size=args.tile_size, **overrides)
            if "labels" in args.formats:
                write_volume_labels(out / f"{path.stem}_labels.tif", labels, voxel)
            if "ome-zarr" in args.formats:
                write_ome_zarr_labels(out / f"{path.stem}.ome.zarr", labels, scale=voxel)
            print(f"{path.name}: {int(labels.max())} objects (anisotropy {info['anisotropy']:.2f})")
        except (OSError, ValueError) as exc:  # one bad stack must not stop the others
            failed.append(f"{path}: {exc}")
    print(f"segmented {len(images) - len(failed)} volume(s) into {out.resolve()}")
    for f in failed:
        print(f"  FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


def _volume_mode(args) -> dict:
    """``predict --3d``'s mode: flows followed in 3-D, or 2-D masks joined at ``--stitch IOU``."""
    return dict(mode="stitch" if args.stitch is not None else "3d", stitch_threshold=args.stitch or 0.0)


def _predict_big(args, diameter) -> int:
    from .big import predict_big

    if len(args.images) != 1 or args.manifest:
        raise ValueError("an --out ending in .zarr segments one (huge) image block by block: give exactly one INPUT")
    volume = dict(volume=True, anisotropy=args.anisotropy, **_volume_mode(args)) if args.three_d else {}
    s = predict_big(args.run_dir, args.images[0], args.out, block_size=args.block_size, diameter=diameter,
                    scheduler=args.scheduler, workers=args.workers, precision=args.precision,
                    tile_size=args.tile_size, **volume)
    aniso = f", anisotropy {s['anisotropy']:.2f}" if args.three_d else ""
    print(f"{s['objects']} objects in {' x '.join(map(str, s['shape']))} px ({s['blocks']} blocks of "
          f"{s['block_size']} px, halo {' x '.join(map(str, s['halo']))} px{aniso}): {Path(s['out']).resolve()}")
    return 0


def _export(args) -> int:
    from .export import export_bioimageio, export_run

    if args.format == "run":
        print(f"slim run directory: {Path(export_run(args.run_dir, args.out)).resolve()}")
        return 0
    out = export_bioimageio(args.run_dir, args.out, name=args.name, authors=args.author or ("unetflow developers",))
    print(f"bioimage.io package: {Path(out).resolve()} (check it with: bioimageio test {out})")
    return 0


def _parse_kv(kv):
    import yaml
    if "=" not in kv:
        raise ValueError(f"--postprocess {kv!r} must look like key=value")
    k, v = kv.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _evaluate(args) -> int:
    from .evaluate import evaluate_run

    if args.stitch is not None and not args.three_d:
        raise ValueError("--stitch joins 2-D masks of a volume's slices: it needs --3d")

    s = evaluate_run(args.run_dir, args.split, manifest=args.manifest, data_root=args.data, tune=not args.no_tune,
                     tta=args.tta, diameter=args.diameter,
                     precision=args.precision, tag=args.tag or "",
                     volumes=("stitch" if args.stitch is not None else "3d") if args.three_d else None,
                     stitch_threshold=args.stitch or 0.0, **dict(_parse_kv(kv) for kv in args.postprocess or ()))
    what = f"volumes ({s['volumes']}, scored in 3-D)" if s.get("volumes") else "images"
    print(f"{s['task']} run on {s['split']}: {s['n_images']} {what}, {s['n_true']} objects")
    print(f"  AP@0.5 {s['ap50']:.3f}  AP@0.75 {s['ap75']:.3f}  AP@0.9 {s['ap90']:.3f}  mean F1 {s['mean_f1']:.3f}")
    print("  errors: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()))
    if "diameter_estimate" in s:
        print(f"  diameter auto: median relative error {s['diameter_estimate']['median_relative_error']:.1%} "
              f"against the manifest's diameters; {s['timing']['size_estimation_s_per_mpx']:.2f} s/Mpx "
              f"(network {s['timing']['network_s_per_mpx']:.2f} s/Mpx)")
    print(f"results in {Path(s['out']).resolve()}")
    return 0


def _compare(args) -> int:
    from .report import compare_runs

    volumes = ("stitch" if args.stitch else "3d") if args.three_d else ""
    path = compare_runs(args.run_dirs, args.out, split=args.split, volumes=volumes)
    print(f"report: {path.resolve()} (and report.html)")
    return 0


def _quickstart(args) -> int:
    from .quickstart import quickstart

    report = quickstart(data=args.data, out=args.out, budget=args.budget, tasks=args.tasks)
    print(f"report: {Path(report).resolve()}")
    return 0


def _data_fetch(args) -> int:
    from .datasets import fetch_dsb2018

    root = fetch_dsb2018(args.to, source=args.source, sha256=args.sha256)
    print(f"DSB 2018 stage-1 training set ready in {root}")
    print(f"use it with: export UNETFLOW_DATA={root}")
    return 0


def _data_group(args) -> int:
    from .progress import progress_bar

    from .io import atomic_write, read_image, read_labels
    from .manifest import read_manifest
    from .splits import grouped_manifest

    m = read_manifest(args.manifest, args.data)
    rows = range(len(m))
    images = [read_image(m.image_path(i)) for i in progress_bar(rows, desc="read images", unit="img")]
    labels = [read_labels(m.label_path(i)) for i in progress_bar(rows, desc="read labels", unit="img")]
    table, neighbours = grouped_manifest(m.table, images, labels, threshold=args.threshold, seed=args.seed)
    out = Path(args.out or args.manifest)
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
    counts = table.groupby(["split"]).size().to_dict()
    print(f"{len(neighbours)} neighbouring-tile pairs, {table['group'].nunique()} groups; images per split: {counts}")
    print(f"manifest with `group`, `split` by group and the old `split_by_image`: {out.resolve()}")
    return 0


def _data_manifest(args) -> int:
    from .folders import manifest_from_folders

    fractions = (1.0, 0.0, 0.0) if args.split == "none" else (1 - args.val - args.test, args.val, args.test)
    if min(fractions) < 0:
        raise ValueError(f"--val {args.val} and --test {args.test} leave no images to train on")
    table = manifest_from_folders(args.images_dir, args.labels_dir, args.out, split=args.split, fractions=fractions,
                                  seed=args.seed)
    counts = ", ".join(f"{k} {v}" for k, v in table["split"].value_counts().sort_index().items())
    print(f"{len(table)} image/label pairs ({table['channels'].iloc[0]} channel(s); {counts}; median object "
          f"{table['median_object_diameter_px'].median():.0f} px): {Path(args.out).resolve()}")
    return 0


#: Subcommands that run a network: they import TensorFlow quietly and name the device first.
NETWORK_COMMANDS = ("train", "predict", "evaluate", "quickstart", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetflow", description="U-Net instance segmentation of cells and nuclei with boundary, flow or "
                                      "distance labels")
    parser.add_argument("--version", action="version", version=f"unetflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages and show TensorFlow's own start-up lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("precompute", help="compute every task's targets (flows, boundary classes, distances) into the cache")
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
    p.add_argument("--init-from", metavar="RUN_DIR", help="fine-tune: start from this run's weights (same task, "
                                                         "channels and architecture); train.init_from")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="segment images with a trained run or a ready model",
                       usage="unetflow predict (RUN_DIR | --model NAME) IMAGE... --out OUT [options]")
    p.add_argument("run_dir", nargs="?", help="a trained run directory (or give --model)")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--model", help="a ready model shipped with unetflow instead of a run directory: "
                                   + (", ".join(pretrained()) or "none installed"))
    p.add_argument("--manifest", help="segment the images of a manifest instead (or as well)")
    p.add_argument("--split", choices=SPLITS, help="only this split of --manifest")
    p.add_argument("--data", help="data root of --manifest")
    p.add_argument("--out", required=True, help="output folder for the label TIFFs; a path ending in .zarr segments "
                                                "one huge INPUT (TIFF or zarr; a stack with --3d) block by block on "
                                                "dask into an OME-Zarr label image")
    p.add_argument("--block-size", type=int, help="blocks of the .zarr path (default: 2048 px; 128 voxels with --3d)")
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="each image is a (Z, Y, X) stack: the 2-D network on its YX, ZY and ZX slices, flows "
                        "followed in 3-D (Cellpose's do_3D); writes <stem>_labels.tif stacks (and <stem>.ome.zarr with "
                        "--formats ome-zarr) with the voxel size")
    p.add_argument("--anisotropy", type=float,
                   help="with --3d: z voxel size / y-x voxel size (default: from the file's metadata, else 1)")
    p.add_argument("--stitch", type=float, metavar="IOU",
                   help="with --3d: 2-D masks per z slice joined across slices at this IoU instead")
    p.add_argument("--scheduler", help="address of a running dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, help="processes of the local dask cluster (default: 1)")
    p.add_argument("--tta", action="store_true", help="test-time flips")
    p.add_argument("--tile-size", type=int,
                   help=f"largest network tile side; an image that fits is one tile (default: {DEFAULT_TILE} px; "
                        f"a 3-D network's cubes: {VOLUME_TILE} voxels)")
    p.add_argument("--diameter", metavar="{auto,native,PX}",
                   help="how each image is sized: auto (estimate its median object diameter and zoom its "
                        "objects to the training size), native (no zoom) or the diameter in px (default: the "
                        "run's own, auto for runs trained at one object size, else native)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=["labels"], metavar="FORMAT",
                   help="what to write for each image, any of: labels (<stem>_labels.tif), cellpose "
                        "(<stem>_masks.tif and <stem>_seg.npy for the Cellpose GUI), rois (<stem>_rois.zip for "
                        "Fiji), ome-zarr (<stem>.ome.zarr label image); default: labels")
    p.add_argument("--save-raw", action="store_true", help="also write flows and cellprob (or class probabilities)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                   help="what the network computes in (default auto: bfloat16 where the CPU has it natively, "
                        "float32 elsewhere; it cost at most 0.002 AP on the DSB test split, docs/results.md)")
    p.add_argument("--postprocess", action="append", metavar="KEY=VALUE",
                   help="post-processing override, e.g. cellprob_threshold=-1 (repeatable)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="score a run on a split (thresholds tuned on val first)")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--manifest", help="manifest (default: the run's)")
    p.add_argument("--data", help="data root (default: the run's)")
    p.add_argument("--no-tune", action="store_true", help="do not tune thresholds on the val split")
    p.add_argument("--tta", action="store_true", help="test-time flips; writes eval_<split>_tta/")
    p.add_argument("--diameter", choices=("auto", "native", "manifest"),
                   help="how each image is sized, as for predict: auto, native, or manifest (zoom by the "
                        "manifest's median_object_diameter_px, known from the annotations: a diagnostic) "
                        "(default: the run's own, written to eval_<split>/; others to eval_<split>_<diameter>/)")
    p.add_argument("--postprocess", action="append", metavar="KEY=VALUE",
                   help="post-processing override, e.g. flow_threshold=0.6 (repeatable)")
    p.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="float32",
                   help="what the network computes in (default: %(default)s; others write eval_<split>_<precision>/)")
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="the manifest lists (Z, Y, X) volumes: segment each as predict --3d does and score it in "
                        "3-D; writes eval_<split>_3d/ (always so for runs trained on volume slices)")
    p.add_argument("--stitch", type=float, metavar="IOU",
                   help="with --3d: 2-D masks per z slice joined across slices at this IoU; writes "
                        "eval_<split>_stitch/")
    p.add_argument("--tag", help="suffix of the output folder, eval_<split>[...]_<tag>/")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="write a run as a bioimage.io model package (.zip)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the package to write, MODEL.zip (a folder for --format run)")
    p.add_argument("--format", choices=("bioimageio", "run"), default="bioimageio",
                   help="bioimageio: a bioimage.io model package; run: a slim run directory with what prediction "
                        "needs, as the ready models are shipped (default: %(default)s)")
    p.add_argument("--name", help="the model's name (default: the run's experiment name)")
    p.add_argument("--author", action="append", metavar="NAME", help="an author (repeatable)")
    p.set_defaults(func=_export)

    p = sub.add_parser("compare", help="compare evaluated runs in a Markdown/HTML report")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--3d", dest="three_d", action="store_true",
                   help="compare the runs' 3-D scores on volumes (evaluate --3d: eval_<split>_3d/)")
    p.add_argument("--stitch", action="store_true", help="with --3d: the stitch mode's scores (eval_<split>_stitch/)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("quickstart", help="boundary vs flow U-Net end to end (synthetic data unless --data)")
    p.add_argument("--data", help="DSB-layout folder with manifest.csv (default: $UNETFLOW_DATA, else synthetic)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    p.add_argument("--budget", choices=("tiny", "small"), default="small",
                   help="training budget: tiny (a minute, for tests) or small (default, under 10 minutes)")
    p.add_argument("--tasks", nargs="+", default=["boundary", "flow"], choices=sorted(TASKS), metavar="TASK",
                   help=f"representations to train and compare, of {', '.join(sorted(TASKS))} "
                        "(default: %(default)s)")
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("data", help="get public data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    f = dsub.add_parser("fetch", help="download (or convert a local copy of) a public data set")
    f.add_argument("name", choices=("dsb2018",))
    f.add_argument("--to", required=True, help="folder to create")
    f.add_argument("--from", dest="source", help="a local archive (.zip) or folder instead of downloading")
    f.add_argument("--sha256", help="expected checksum of the archive")
    f.set_defaults(func=_data_fetch)
    g = dsub.add_parser("group", help="group images by experiment (neighbouring tiles, series) and split by group")
    g.add_argument("manifest", nargs="?", default="data_manifest.csv", help="manifest CSV (default: %(default)s)")
    g.add_argument("--data", help="data root of the manifest")
    g.add_argument("--out", help="where to write the new manifest (default: overwrite MANIFEST)")
    g.add_argument("--threshold", type=float, default=0.2,
                   help="series clustering cut, in standard deviations (default: %(default)s; 0: tiles only)")
    g.add_argument("--seed", type=int, default=0, help="first seed of the split search (default: %(default)s)")
    g.set_defaults(func=_data_group)
    mf = dsub.add_parser("manifest", help="write a manifest from a folder of images and a folder of labels "
                                          "(paired by name; every pair checked, every problem reported)")
    mf.add_argument("images_dir", metavar="IMAGES_DIR")
    mf.add_argument("labels_dir", metavar="LABELS_DIR", help="label images named as their image, optionally with "
                                                              "a suffix such as _labels or _masks")
    mf.add_argument("--out", default="manifest.csv", help="the manifest to write; its paths are relative to its "
                                                          "folder (default: %(default)s)")
    mf.add_argument("--split", choices=SPLIT_MODES, default="random",
                    help="random: image by image; by-group: tiles of one field and acquisition series stay in one "
                         "split; none: all train (default: %(default)s)")
    mf.add_argument("--val", type=float, default=0.2, help="share of images for val (default: %(default)s)")
    mf.add_argument("--test", type=float, default=0.0, help="share of images for test (default: %(default)s)")
    mf.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")
    mf.set_defaults(func=_data_manifest)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in NETWORK_COMMANDS:
            print(f"unetflow: the network runs on {import_tensorflow(args.verbose)}", file=sys.stderr)
        return args.func(args)
    # the user's errors (bad input, missing files, a diverged run) in one line; anything else (a
    # TypeError, KeyError, ...) is a bug and keeps its traceback, as does every error under -v
    except (OSError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"unetflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. TrainingDivergedError: the message says what was kept
        if args.verbose:
            raise
        print(f"unetflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"unetflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
