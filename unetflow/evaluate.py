"""Evaluation of a run on a split, and post-processing threshold tuning on the validation split.

``evaluate_run`` writes an evaluation folder of the run directory (:meth:`unetflow.rundir.RunDir.eval_dir`:
``eval_<split>/``, ``eval_<split>_tta/``, ``..._manifest/`` ... for the variants)::

    per_image.csv     one row per (image, IoU threshold): counts, AP, F1, PQ, error categories
    summary.json      dataset-level scores at IoU 0.50:0.05:0.95, mean F1, error categories,
                      per-modality scores, timings (s per megapixel), the thresholds used
    labels/           predicted label TIFFs
    raw/              raw network outputs (npz) of the first few images, for the report's plots

``tune_thresholds`` searches the task's post-processing grid (:attr:`unetflow.tasks.Task.tuning_grid`;
for example ``cellprob_threshold`` x ``flow_threshold`` for the flow model, ``boundary_boost`` x
``method`` for the boundary model) on the validation split, maximising the mean of AP at IoU 0.5, 0.75 and 0.9, and saves
the best in the run's ``thresholds.json``, which ``predict`` then uses.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .conventions import DEFAULT_TILE
from .io import atomic_write, read_ahead, read_image, read_labels, write_labels
from .metrics import DEFAULT_THRESHOLDS, error_categories, matching_dataset, per_image_table
from .predict import Run, load_run, predict_raw_many, raw_to_labels, segmenter
from .sizing import resolve_size
from .preprocess import prepare_image
from .tasks import get_task

__all__ = ["evaluate_run", "evaluate_volumes", "tune_thresholds", "predict_split", "split_files", "summarize", "TUNING_IOUS"]

logger = logging.getLogger(__name__)

#: The tuning objective is the mean AP at these IoU thresholds.
TUNING_IOUS = (0.5, 0.75, 0.9)
RAW_EXAMPLES = 6


def split_files(run: Run, split: str, manifest=None, data_root=None):
    """Image and label paths, names and metadata rows of a split, from the run's (or a given) manifest."""
    from .manifest import read_manifest

    manifest_path = manifest or run.meta.get("manifest")
    root = data_root or (None if manifest else run.meta.get("data_root"))
    if not manifest_path:
        raise ValueError(f"{run.path}: no manifest recorded in the run; pass --manifest")
    m = read_manifest(manifest_path, root).split(split)
    names = [Path(p).stem for p in m.table["image"]]
    return ([m.image_path(i) for i in range(len(m))], [m.label_path(i) for i in range(len(m))], names,
            m.table.reset_index(drop=True))


def _manifest_diameters(rows):
    """Per-image object diameters from the manifest (the ``"manifest"`` sizing)."""
    column = "median_object_diameter_px"
    if column not in rows.columns or rows[column].isna().any():
        raise ValueError(f"diameter 'manifest' needs a {column!r} value for every image of the manifest")
    return list(rows[column])


def predict_split(run: Run, images, *, tta=False, tile_size=DEFAULT_TILE, diameters=None, progress=True):
    """Raw network outputs for each image (prepared with the run's input conventions), with timings.

    `diameters`: a sizing of :mod:`unetflow.sizing` for every image (``"native"``, ``"auto"``; None:
    the run's own), or one diameter per image; the image is then zoomed so its objects match the
    training median diameter, and the outputs back.
    Images are read ahead by a background thread, and tiles of one shape from consecutive images
    share network calls (:func:`unetflow.predict.predict_raw_many`).  The timings hold the network
    time (wall time, less the size estimation and any wait for reading) and, with ``"auto"``, the
    estimation time (with the segmentation the estimate keeps, :func:`unetflow.sizing.auto_size`)
    and the estimates.
    """
    from .progress import progress_bar

    if diameters is None or isinstance(diameters, str):
        diameters = run.sizing(diameters)
    else:
        diameters = [run.sizing(d) for d in diameters]
    clock = {"size": 0.0, "wait": 0.0, "px": 0}
    tiling = dict(task=run.task, tile_size=tile_size, tta=tta, input_multiple=run.input_multiple)
    used = []
    pp = run.postprocess_config()

    def items():
        stream = read_ahead(lambda path: prepare_image(read_image(path), run.config.input), images)
        t0 = time.perf_counter()
        for k, (path, x) in enumerate(stream):
            t1 = time.perf_counter()
            if isinstance(x, Exception):
                raise x
            wanted = diameters if isinstance(diameters, str) else diameters[k]
            sized = resolve_size(run.model, x, wanted, task=run.task, train_diameter=run.train_diameter,
                                 postprocess=pp, segment=segmenter(run.model, x, **tiling))
            clock["wait"] += t1 - t0
            clock["size"] += time.perf_counter() - t1
            clock["px"] += x.shape[0] * x.shape[1]
            used.append(sized.diameter)
            yield sized.network_item(x)
            t0 = time.perf_counter()  # the time away, in the network, is not waiting for reading

    t0 = time.perf_counter()
    stream = predict_raw_many(run.model, items(), **tiling)
    raws = list(progress_bar(stream, total=len(images), desc=f"predict ({run.task})", unit="img", enabled=progress))
    t_net = time.perf_counter() - t0 - clock["size"] - clock["wait"]
    return raws, {"network_s": t_net, "size_estimation_s": clock["size"], "megapixels": clock["px"] / 1e6,
                  "diameters": used}


def _postprocess_all(run: Run, raws, config):
    return [raw_to_labels(r, run.task, config) for r in raws]


def _objective(truth, preds):
    return float(np.mean([m.ap for m in matching_dataset(truth, preds, list(TUNING_IOUS))]))


def tune_thresholds(run: Run, *, manifest=None, data_root=None, split: str = "val", tta=False, diameter=None,
                    progress=True) -> dict:
    """Grid-search the post-processing thresholds on `split`; save and return them.

    `diameter` (a sizing of :mod:`unetflow.sizing`; None: the run's own) sizes the images as the
    evaluation will.

    Returns a dict with the chosen ``postprocess`` overrides, the objective, and the grid's scores.
    """
    images, labels, names, _ = split_files(run, split, manifest, data_root)
    truth = [read_labels(p) for p in labels]
    raws, _ = predict_split(run, images, tta=tta, diameters=diameter, progress=progress)
    base = getattr(run.config.postprocess, run.task)
    scores = get_task(run.task).tune(raws, lambda preds: _objective(truth, preds), base, progress)
    best, value = max(scores, key=lambda s: s[1])
    default_value = next((v for p, v in scores if all(getattr(base, k) == x for k, x in p.items())), None)
    result = {"postprocess": best, "objective": f"mean AP at IoU {list(TUNING_IOUS)} on split {split!r}",
              "diameter": diameter,
              "value": value, "value_with_config_defaults": default_value, "n_images": len(images),
              "grid": [{**p, "score": v} for p, v in scores]}
    if run.path is not None:
        run.dir.write_json(run.dir.THRESHOLDS, result)
    run.thresholds = best
    return result


def summarize(truth, preds, table, meta_rows=None) -> dict:
    """Dataset-level scores, mean F1 over 0.5:0.95, error categories, and per-modality scores."""
    ms = matching_dataset(truth, preds, list(DEFAULT_THRESHOLDS))
    per_image = table.drop_duplicates("image").reset_index(drop=True) if table is not None else None
    if per_image is not None:  # per_image_table already holds each image's error categories
        columns = [c for c in per_image.columns if c.startswith("missed") or c in ("extra", "merges", "splits")]
        errors = {c: int(per_image[c].sum()) for c in columns}
    else:
        errors = {}
        for t, p in zip(truth, preds):
            for k, v in error_categories(t, p).items():
                errors[k] = errors.get(k, 0) + v
    out = {"n_images": len(truth), "n_true": ms[0].n_true,
           "by_iou": {f"{m.thresh:.2f}": {k: getattr(m, k) for k in
                                           ("tp", "fp", "fn", "precision", "recall", "f1", "ap",
                                            "mean_matched_iou", "panoptic_quality")} for m in ms},
           "mean_f1": float(np.mean([m.f1 for m in ms])), "mean_ap": float(np.mean([m.ap for m in ms])),
           "errors": errors}
    out["ap50"], out["ap75"], out["ap90"] = (out["by_iou"][k]["ap"] for k in ("0.50", "0.75", "0.90"))
    if meta_rows is not None and "modality" in meta_rows.columns:
        out["by_modality"] = {}
        for mod in sorted(meta_rows["modality"].dropna().unique()):
            idx = [i for i, v in enumerate(meta_rows["modality"]) if v == mod]
            sub = summarize([truth[i] for i in idx], [preds[i] for i in idx],
                            per_image.iloc[idx] if per_image is not None else None)
            out["by_modality"][mod] = {k: sub[k] for k in ("n_images", "n_true", "ap50", "ap75", "ap90",
                                                           "mean_f1", "errors")}
    return out


def evaluate_volumes(run: Run, split: str, *, manifest=None, data_root=None, diameter=None, mode: str = "3d",
                     stitch_threshold: float = 0.25, tag: str = "", progress: bool = True, **postprocess) -> dict:
    """Score a run (a 2-D one, or a 3-D one in mode ``"3d"``) on the ``(Z, Y, X)`` volumes of a split, in 3-D.

    Each volume is segmented by :func:`unetflow.volume.predict_volume` (`mode` ``"3d"``: the three
    views' flows followed in 3-D; ``"stitch"``: 2-D masks joined across z at `stitch_threshold`)
    with the anisotropy read from the file, and matched in 3-D against its labels (IoU of voxel
    sets).  `diameter`: a sizing of :mod:`unetflow.sizing`, or ``"manifest"`` for the manifest's
    ``median_object_diameter_vox``.  The post-processing is the run's configuration (and
    `postprocess` overrides): thresholds tuned on 2-D images do not carry over to 3-D, so none are
    tuned here.  Writes ``eval_<split>_<mode>[_<sizing>][_<tag>]/`` with ``labels/`` (stacks with
    their voxel size), ``per_image.csv`` (one row per volume and IoU threshold; error-category sizes
    in voxels) and ``summary.json``, whose keys are those of :func:`evaluate_run`'s summary.
    """
    from .io import anisotropy_of, read_volume, write_volume_labels
    from .progress import progress_bar
    from .volume import predict_volume

    images, labels, names, rows = split_files(run, split, manifest, data_root)
    if not images:
        raise ValueError(f"split {split!r} is empty")
    sizing = diameter if diameter == "manifest" else run.sizing(diameter, words=("auto", "native"))
    if sizing == "manifest":
        column = "median_object_diameter_vox"
        if column not in rows.columns or rows[column].isna().any():
            raise ValueError(f"diameter 'manifest' needs a {column!r} value for every volume of the manifest")
        sizes = list(rows[column])
    else:
        sizes = [sizing] * len(images)
    suffix = "" if sizing == run.default_sizing else str(sizing)
    where = dict(volumes=mode, sizing=suffix, tag=tag)
    out = run.dir.eval_dir(split, **where)
    truth, preds, used, options = [], [], [], {}
    seconds = voxels = 0.0
    for image, label, name, size in progress_bar(list(zip(images, labels, names, sizes)), desc="segment volumes",
                                                 unit="vol", enabled=progress):
        volume, voxel = read_volume(image)
        t0 = time.perf_counter()
        pred, info = predict_volume(run, volume, anisotropy=anisotropy_of(voxel), diameter=size,
                                    mode=mode, stitch_threshold=stitch_threshold, **postprocess)
        seconds += time.perf_counter() - t0
        voxels += float(np.prod(volume.shape[:3]))
        truth.append(read_labels(label, ndim=3))
        if truth[-1].shape != pred.shape:
            raise ValueError(f"{label}: labels of shape {truth[-1].shape} for a volume of shape {pred.shape}")
        preds.append(pred)
        used.append(info.get("diameter"))
        options = info["postprocess"]
        write_volume_labels(run.dir.eval_labels(split, name, **where), pred, voxel)
    table = per_image_table(truth, preds, names)
    table["diameter_used"] = table["image"].map(dict(zip(names, used)))
    atomic_write(out / run.dir.PER_IMAGE, lambda tmp: table.to_csv(tmp, index=False))
    summary = summarize(truth, preds, table, rows)
    summary.update(run=str(run.path), out=str(out), task=run.task, split=split, tta=False, diameter=sizing,
                   volumes=mode, stitch_threshold=stitch_threshold if mode == "stitch" else None,
                   postprocess=options, images=names,
                   timing={"seconds": seconds, "megavoxels": voxels / 1e6, "s_per_mvox": seconds / (voxels / 1e6)})
    run.dir.write_json(out.relative_to(run.dir.path) / run.dir.SUMMARY, summary)
    return summary


def evaluate_run(run_dir, split: str = "test", *, manifest=None, data_root=None, tune: bool = True,
                 tta: bool = False, diameter=None, tag: str = "", progress: bool = True,
                 precision: str = "float32", volumes: str | None = None, stitch_threshold: float = 0.25,
                 **postprocess) -> dict:
    """Evaluate a run on a split (tuning thresholds on "val" first, unless already tuned or `tune` is False).

    `volumes` (``"3d"`` or ``"stitch"``) scores a manifest of ``(Z, Y, X)`` volumes in 3-D with
    :func:`evaluate_volumes`; a run trained on volumes (:attr:`unetflow.run.Run.trained_on_volumes`)
    always is.

    `diameter`: how each image is sized (:mod:`unetflow.sizing`): ``"auto"`` estimates each image's
    object size and zooms it to the training size (reporting the estimates' error against the
    manifest's ``median_object_diameter_px``), ``"native"`` uses each image at its own scale,
    ``"manifest"`` zooms by the manifest's diameters (known from the annotations: a diagnostic of
    what object size costs), and None is the run's own choice (:attr:`unetflow.predict.Run.default_sizing`).
    The run's own choice writes ``eval_<split>/``, another ``eval_<split>_<diameter>/``.  Thresholds
    are tuned with the run's own choice.
    `tag` is appended to the output folder's name (e.g. ``eval_test_auto_zoom2``).
    `precision` is what the network computes in (:func:`unetflow.predict.load_run`); other than
    float32 it is appended to the folder's name unless a `tag` is given (``eval_test_bfloat16``).

    Returns the summary dict (also written to ``RUN_DIR/eval_<split>/summary.json``; with `tta` or
    another sizing to ``eval_<split>_tta/``, ``eval_<split>_manifest/``, ``eval_<split>_tta_auto/``
    ..., so the plain evaluation that ``compare`` reads is kept).
    """
    run = load_run(run_dir, precision=precision)
    if volumes or run.trained_on_volumes:
        if tta:
            raise ValueError("tta applies to 2-D images; volumes are already predicted from three views")
        return evaluate_volumes(run, split, manifest=manifest, data_root=data_root, diameter=diameter,
                                mode=volumes or "3d", stitch_threshold=stitch_threshold, tag=tag,
                                progress=progress, **postprocess)
    # a precision other than float32 always names the folder: a tag alone must not overwrite float32's
    tag = "_".join(p for p in ("" if precision == "float32" else precision, tag) if p)
    if diameter is not None and not isinstance(diameter, str):
        raise ValueError(f"evaluate sizes a whole split: give diameter 'auto', 'native' or 'manifest', got {diameter!r}")
    sizing = run.sizing(diameter, words=("auto", "native", "manifest"))
    # a run's thresholds are always the val split's; scored on val, they are the tuning objective's
    if tune and not (run.dir / run.dir.THRESHOLDS).is_file():
        tune_thresholds(run, manifest=manifest, data_root=data_root, tta=tta, progress=progress)
    images, labels, names, rows = split_files(run, split, manifest, data_root)
    if not images:
        raise ValueError(f"split {split!r} is empty")
    truth = [read_labels(p) for p in labels]
    diameters = _manifest_diameters(rows) if sizing == "manifest" else sizing
    raws, timing = predict_split(run, images, tta=tta, diameters=diameters, progress=progress)
    used = timing.pop("diameters")
    config = run.postprocess_config(**postprocess)
    t0 = time.perf_counter()
    preds = _postprocess_all(run, raws, config)
    timing["postprocess_s"] = time.perf_counter() - t0
    # the run's own sizing writes eval_<split>/ (what compare and the notebooks read); others a suffix
    suffix = "" if sizing == run.default_sizing else sizing
    where = dict(tta=tta, sizing=suffix, tag=tag)
    out = run.dir.eval_dir(split, **where)
    for k, (name, pred) in enumerate(zip(names, preds)):
        path = run.dir.eval_labels(split, name, **where)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_labels(path, pred)
        if k < RAW_EXAMPLES:
            path = run.dir.eval_raw(split, name, **where)
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, lambda tmp, r=raws[k]: np.savez_compressed(tmp, raw=r))
    table = per_image_table(truth, preds, names)
    table["diameter_used"] = table["image"].map(dict(zip(names, used)))
    extra = [c for c in rows.columns if c not in ("image", "label", "split", "source", "license")]
    table = table.merge(rows.assign(image=names)[["image"] + extra], on="image", how="left")
    atomic_write(out / run.dir.PER_IMAGE, lambda tmp: table.to_csv(tmp, index=False))
    summary = summarize(truth, preds, table, rows)
    column = "median_object_diameter_px"
    if sizing == "auto" and column in rows.columns:
        est, true = np.array([u or np.nan for u in used], float), rows[column].to_numpy(float)
        summary["diameter_estimate"] = {"median_relative_error": float(np.nanmedian(np.abs(est / true - 1))),
                                        "failed": int(np.isnan(est).sum())}
    summary.update(run=str(run.path), out=str(out), task=run.task, split=split, tta=tta, diameter=sizing, precision=precision,
                   postprocess={k: v for k, v in vars(config).items()},
                   timing={**timing, "network_s_per_mpx": timing["network_s"] / timing["megapixels"],
                           "size_estimation_s_per_mpx": timing["size_estimation_s"] / timing["megapixels"],
                           "postprocess_s_per_mpx": timing["postprocess_s"] / timing["megapixels"]},
                   images=names)
    run.dir.write_json(out.relative_to(run.dir.path) / run.dir.SUMMARY, summary)  # names are run-relative
    return summary
