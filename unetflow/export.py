"""Export a trained run as a bioimage.io model package (format 0.5), which the model zoo's tools,
deepImageJ, ilastik and bioimageio.core run without unetflow.

The package holds the description (``rdf.yaml``), the network as ``keras_v3`` weights (an
inference-only copy: built-in layers, no unetflow losses or schedules) and as a TensorFlow
SavedModel, a test input and output from the run's own validation images, a cover and the
documentation.  What the description cannot express is said in the documentation: grey averaging
of colour images, inversion of bright-background images, the object size the network was trained
at, and the post-processing that turns outputs into instances.  Writing the package needs no
network access and no bioimage.io library; ``bioimageio test MODEL.zip`` checks it.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile
import yaml

from . import __version__
from .io import atomic_write, hash_file, read_image
from .rundir import RunDir
from .tasks import get_task

__all__ = ["export_bioimageio", "export_run", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

#: The bioimage.io model description format written (bioimageio.spec 0.5.12).
FORMAT_VERSION = "0.5.12"
CITATIONS = [
    {"text": "Stringer, Wang, Michaelos & Pachitariu. Cellpose: a generalist algorithm for cellular segmentation. "
             "Nature Methods 18, 100-106 (2021)", "doi": "10.1038/s41592-020-01018-x"},
    {"text": "Caicedo et al. Evaluation of deep learning strategies for nucleus segmentation in fluorescence "
             "images. Cytometry A 95, 952-965 (2019)", "doi": "10.1002/cyto.a.23863"},
    {"text": "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
             "Nature Methods 16, 1247-1253 (2019)", "doi": "10.1038/s41592-019-0612-7"},
]


def _test_image(run, side: int):
    """A raw test image (in the network's channels) from the run's own data: the first val image
    whose background is dark (the one polarity the package's pre-processing reproduces), cropped
    to `side` px."""
    from .evaluate import split_files
    from .preprocess import input_stats, network_channels

    cfg = run.config
    try:
        images = split_files(run, "val")[0]  # the manifest and data root the run was trained with
    except (OSError, ValueError) as exc:
        raise ValueError(f"export needs the run's own data for its test tensors: {exc}") from None
    for path in images:
        image = network_channels(read_image(path), cfg.input)
        if not any(input_stats(image, cfg.input).invert):
            h, w = image.shape[:2]
            y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
            return path, image[y:y + side, x:x + side]
    raise ValueError(f"no val image of {run.path} has a dark background; the package's test needs one")


def _inference_copy(model):
    """The network with float32 layers and no compile state (no unetflow losses, metrics or
    schedules): what a plain ``keras.models.load_model``, bioimage.io's loader, opens."""
    import keras

    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def _saved_model(model, folder: Path, input_id: str, output_id: str) -> None:
    """A SavedModel whose serving endpoint returns ``{output_id: tensor}`` (what bioimage.io's
    TensorFlow runner expects)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec([None, None, None, model.inputs[0].shape[-1]], tf.float32, name=input_id)
    archive.add_endpoint("serve", lambda x: {output_id: model(x, training=False)}, input_signature=[spec])
    archive.write_out(str(folder), verbose=False)


def _cover(image, labels, path) -> None:
    """A 2:1 cover: the test image, and its predicted outlines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import outline_overlay, to_grey

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=64)
    axes[0].imshow(to_grey(image), cmap="gray")
    axes[1].imshow(outline_overlay(image, pred=labels))
    for ax in axes:
        ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1, 0.01, 0)
    fig.savefig(path)
    plt.close(fig)


def _documentation(run, task, params, name: str, scores: dict | None) -> str:
    cfg = run.config
    lo, hi = cfg.input.percentiles
    d = run.train_diameter
    pp = run.postprocess_config()
    lines = [
        f"# {name}", "",
        f"A {cfg.model.depth}-level, {cfg.model.base_filters}-filter U-Net trained with "
        f"unetflow {__version__} for instance segmentation with "
        f"{task.name} labels (run `{run.path.name}`).", "",
        "## Input", "",
        f"Channels {list(cfg.input.names)}, `(batch, y, x, {cfg.input.channels})`, y and x multiples of "
        f"{params['input_multiple']}. The package "
        f"scales each image's {lo} and {hi} percentiles to 0 and 1 (`scale_range`).",
        "What the description cannot express, and a consumer must do before the network:", "",
        "* colour images: average the channels to one grey channel;" if cfg.input.grey else
        f"* the network takes {cfg.input.channels} channels;",
        "* images whose background is brighter than the objects (brightfield, stained tissue): invert them "
        "(max - image) so objects are bright;" if cfg.input.invert_bright_background else "",
        f"* object size: the network learnt objects of median diameter {d:.0f} px; zoom each image so its "
        "objects have that size (`unetflow predict --diameter auto` estimates it)." if d else "", "",
        "## Output", "", f"`(batch, y, x, {task.channels})`, channels `{', '.join(task.channel_names)}`. "
        + task.output_doc, "",
        "Post-processing options (its thresholds tuned on the validation split): "
        + ", ".join(f"`{k} = {v}`" for k, v in sorted(dataclasses.asdict(pp).items())) + ".", "",
        "With unetflow: `unetflow predict RUN_OR_MODEL image.tif --out out/` does all of the above.", "",
    ]
    lines += ["## Validation", "", "The package's test input is a crop of one of the run's validation images, and "
              "its test output the network's float32 output on it."]
    if scores:
        lines += ["Instance scores on the run's held-out test split (`unetflow evaluate`, average precision at "
                  "IoU 0.5 / 0.75 / 0.9): " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) + "."]
    lines += [""]
    lines += ["## Training", "", f"Data: `{Path(run.meta.get('manifest', '?')).name}` "
              f"(sha256 {run.meta.get('manifest_sha256', '?')[:12]}); config in the package's `config.unetflow`.",
              "", "## Licence", "", "BSD-3-Clause (the code and these weights).", ""]
    return "\n".join(line for line in lines if line is not None)


def export_bioimageio(run_dir, out, *, name: str | None = None, authors=("unetflow developers",),
                      test_size: int = 256) -> Path:
    """Write a bioimage.io model package (``.zip``) of a run.

    Parameters
    ----------
    run_dir : path
        A trained run directory (its ``best.keras``, config and thresholds).
    out : path
        The ``.zip`` to write (under a temporary name, then renamed).
    name : str, optional
        The model's name (default: the run's experiment name).
    authors : sequence of str
    test_size : int
        Side of the test tensor cropped from one of the run's val images (rounded down to the
        network's input multiple).

    Raises
    ------
    ValueError
        If `out` does not end in ``.zip`` or the run's data cannot give a test image.
    """
    import keras
    import tensorflow as tf

    from .predict import load_run, raw_to_labels
    from .preprocess import prepare_image

    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"--out {out}: a bioimage.io package is a .zip file")
    run = load_run(run_dir, precision="float32")
    run.require_images()  # a package of a 3-D network would need 3-D axes and test volumes
    task = get_task(run.task)
    params = run.params
    m = int(params["input_multiple"])
    side = max(m, test_size // m * m)
    source, raw_image = _test_image(run, side)
    h, w = (raw_image.shape[0] // m * m, raw_image.shape[1] // m * m)
    raw_image = np.ascontiguousarray(raw_image[:h, :w], np.float32)
    model = _inference_copy(run.model)
    x = prepare_image(raw_image, run.config.input)[None]
    y = model.predict(x, verbose=0).astype(np.float32)
    labels = raw_to_labels(y[0], run.task, run.postprocess_config())

    name = name or run.config.name
    input_id, output_id = "image", model.layers[-1].name  # e.g. flows_cellprob
    with tempfile.TemporaryDirectory(prefix="unetflow-export-") as tmp:
        tmp = Path(tmp)
        model.save(tmp / "model.keras")
        _saved_model(model, tmp / "saved_model", input_id, output_id)
        shutil.make_archive(str(tmp / "tf_saved_model"), "zip", tmp / "saved_model")
        np.save(tmp / "test_input.npy", raw_image[None])
        np.save(tmp / "test_output.npy", y)
        tifffile.imwrite(tmp / "sample_input.tif", raw_image[None], photometric="minisblack")  # for viewers
        tifffile.imwrite(tmp / "sample_output.tif", y, photometric="minisblack")
        _cover(raw_image, labels, tmp / "cover.png")
        rd = RunDir(run.path)
        summary = rd.eval_summary("test") if (rd.eval_dir("test") / rd.SUMMARY).is_file() else {}
        scores = {k: summary[k] for k in ("ap50", "ap75", "ap90") if isinstance(summary.get(k), (int, float))}
        (tmp / "README.md").write_text(_documentation(run, task, params, name, scores))
        space = {"min": m, "step": m}
        cfg_in = run.config.input

        def file(name):
            return {"source": name, "sha256": hash_file(tmp / name).hexdigest()}

        rdf = {
            "format_version": FORMAT_VERSION, "type": "model", "name": name,
            "description": f"U-Net ({task.name} labels) for nucleus and cell instance segmentation, trained with "
                           f"unetflow {__version__}",
            "authors": [{"name": a} for a in authors], "cite": CITATIONS, "license": "BSD-3-Clause",
            "documentation": file("README.md"),
            "covers": [file("cover.png")],
            "tags": ["unet", "instance-segmentation", "nuclei", "2d", "keras", "tensorflow", "unetflow", task.name],
            "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "inputs": [{
                "id": input_id, "description": f"channels {', '.join(cfg_in.names)}; see the documentation for colour "
                                               "and bright-background images",
                "axes": [{"type": "batch"}, {"type": "space", "id": "y", "size": space},
                         {"type": "space", "id": "x", "size": space},
                         {"type": "channel", "channel_names": list(cfg_in.names)}],
                "test_tensor": file("test_input.npy"), "sample_tensor": file("sample_input.tif"),
                "data": {"type": "float32"},
                "preprocessing": [{"id": "scale_range", "kwargs": {
                    "axes": ["y", "x"], "min_percentile": float(run.config.input.percentiles[0]),
                    "max_percentile": float(run.config.input.percentiles[1])}}]}],
            "outputs": [{
                "id": output_id, "description": f"channels {', '.join(task.channel_names)}: see the documentation",
                "axes": [{"type": "batch"},
                         *[{"type": "space", "id": a, "size": {"tensor_id": input_id, "axis_id": a}} for a in "yx"],
                         {"type": "channel", "channel_names": list(task.channel_names)}],
                "test_tensor": file("test_output.npy"), "sample_tensor": file("sample_output.tif"),
                "data": {"type": "float32"}}],
            "weights": {
                "keras_v3": {**file("model.keras"), "keras_version": keras.__version__,
                             "backend": ["tensorflow", tf.__version__]},
                "tensorflow_saved_model_bundle": {
                    **file("tf_saved_model.zip"), "tensorflow_version": tf.__version__, "parent": "keras_v3"}},
            "config": {"unetflow": {
                "version": __version__, "task": task.name, "run": run.path.name,
                "input": {"grey": run.config.input.grey, "invert_bright_background":
                          run.config.input.invert_bright_background},
                "train_median_diameter": run.train_diameter,
                "postprocess": dataclasses.asdict(run.postprocess_config()),
                "test_image": Path(source).name},
                **task.package_config(run.postprocess_config())},
        }
        (tmp / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
        files = ["rdf.yaml", "README.md", "cover.png", "model.keras", "tf_saved_model.zip", "test_input.npy",
                 "test_output.npy", "sample_input.tif", "sample_output.tif"]

        def write(path):
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in files:
                    zf.write(tmp / f, f)
        atomic_write(out, write)
    logger.info("bioimage.io package of %s: %s", run.path, out)
    return out


def export_run(run_dir, out) -> Path:
    """A slim copy of a run directory with what prediction needs: the inference-only model as
    ``best.keras``, the config, meta (without local paths), model parameters, tuned thresholds and
    test-split summaries.  This is how the ready models in ``unetflow/pretrained/`` are made.

    Raises
    ------
    FileExistsError
        If `out` exists.
    """
    import json

    from .predict import load_run

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out}: exists; choose a new folder")
    run = load_run(run_dir, precision="float32")
    src = RunDir(run.path)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dst = RunDir(tmp)
    tmp.mkdir(parents=True)
    try:
        _inference_copy(run.model).save(dst.model_file("best"))
        for name in (src.CONFIG, src.MODEL_PARAMS, src.THRESHOLDS):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        meta = {k: v for k, v in run.meta.items() if k not in ("data_root",)}
        meta["manifest"] = Path(meta.get("manifest", "")).name
        meta["exported_from"] = run.path.name
        dst.write_json(dst.META, meta)
        state = src.read_json(src.STATE, {})
        dst.write_json(dst.STATE, {k: state.get(k) for k in ("epochs_done", "best_epoch", "best_val_loss", "status")})
        for folder in sorted(run.path.glob("eval_test*")):
            if (folder / src.SUMMARY).is_file():
                (tmp / folder.name).mkdir()
                summary = json.loads((folder / src.SUMMARY).read_text())
                for local in ("run", "out", "images"):  # this machine's paths, and per-image rows
                    summary.pop(local, None)
                RunDir(tmp / folder.name).write_json(src.SUMMARY, summary)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
