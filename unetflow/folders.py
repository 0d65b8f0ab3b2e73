"""A manifest from two folders: bring your own images and labels without writing a CSV by hand.

Images and labels are paired by name: a label file belongs to the image whose name (without the
extension) it repeats, optionally followed by one of :data:`LABEL_SUFFIXES` (``img01.tif`` with
``img01.tif``, ``img01_labels.tif`` or ``img01_masks.png``).  Every pair is read and checked, and all
problems are reported at once (:class:`unetflow.manifest.ManifestError`), so one run of the
command tells a user everything to fix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .io import ImageReadError, atomic_write, read_image, read_labels
from .manifest import ManifestError

__all__ = ["manifest_from_folders", "LABEL_SUFFIXES", "SPLIT_MODES", "IMAGE_EXTENSIONS"]

#: Endings of a label file's name after its image's name.
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_cp_masks", "-labels", "-masks")
#: File types looked at in the folders.
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: How the images are split: ``random`` (image by image), ``by-group`` (tiles of one field and
#: acquisition series kept in one split, :func:`unetflow.splits.grouped_manifest`), ``none`` (all train).
SPLIT_MODES = ("random", "by-group", "none")


def _files(folder: Path) -> list:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _key(label: Path) -> str:
    stem = label.stem
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def manifest_from_folders(images_dir, labels_dir, out, *, split: str = "random", fractions=(0.8, 0.2, 0.0),
                          seed: int = 0) -> pd.DataFrame:
    """Pair the images of one folder with the labels of another and write a manifest CSV.

    Parameters
    ----------
    images_dir, labels_dir : path
        The folders (they may be one folder, the labels then carry a suffix).
    out : path
        The manifest to write (atomically).  Its paths are relative to its own folder, the data
        root a manifest's paths default to.
    split : {"random", "by-group", "none"}
        See :data:`SPLIT_MODES`.
    fractions : (float, float, float)
        Shares of train, val and test.  A user's own test images are best kept in a folder of
        their own; the default holds out a fifth for val (thresholds are tuned there).
    seed : int

    Returns
    -------
    pandas.DataFrame
        The table written: ``image, label, split, channels, height, width, n_objects,
        median_object_diameter_px``.

    Raises
    ------
    ManifestError
        Listing every problem: an image without a label, a label without an image, two labels for
        one image, unreadable files, an image and label of different sizes, a label image that is
        not instance labels.
    """
    from .flows import diameters

    if split not in SPLIT_MODES:
        raise ValueError(f"`split` must be one of {SPLIT_MODES}, got {split!r}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1):
        raise ValueError(f"`fractions` (train, val, test) must be 3 non-negative shares summing to 1, got {fractions}")
    images_dir, labels_dir, out = Path(images_dir), Path(labels_dir), Path(out)
    images = {p.stem: p for p in _files(images_dir)}
    labels, problems = {}, []
    for p in _files(labels_dir):
        if images_dir.resolve() == labels_dir.resolve() and p.stem in images and _key(p) == p.stem:
            continue  # an image, in a shared folder
        key = _key(p)
        if key in labels:
            problems.append(f"{p}: a second label file for image {key!r} (the first is {labels[key].name})")
        labels[key] = p
    for key in sorted(set(labels) - set(images)):
        problems.append(f"{labels[key]}: no image named {key}.* in {images_dir}")
    if not images:
        problems.append(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    rows, arrays, root = [], [], out.resolve().parent
    for key, image_path in images.items():
        if key not in labels:
            problems.append(f"{image_path}: no label file in {labels_dir} (looked for {key}"
                            f"{{,{','.join(LABEL_SUFFIXES)}}}.*)")
            continue
        try:
            image = read_image(image_path)
            lab = read_labels(labels[key])
        except (ImageReadError, ValueError, OSError) as exc:
            problems.append(str(exc) if str(image_path) in str(exc) or str(labels[key]) in str(exc)
                            else f"{image_path} / {labels[key]}: {exc}")
            continue
        if image.shape[:2] != lab.shape:
            problems.append(f"{image_path} is {image.shape[0]} x {image.shape[1]} px but its label {labels[key]} is "
                            f"{lab.shape[0]} x {lab.shape[1]}")
            continue
        rows.append({"image": Path(os.path.relpath(image_path.resolve(), root)).as_posix(),
                     "label": Path(os.path.relpath(labels[key].resolve(), root)).as_posix(),
                     "split": "train", "channels": image.shape[-1], "height": lab.shape[0], "width": lab.shape[1],
                     "n_objects": int(lab.max()), "median_object_diameter_px": round(diameters(lab), 1)})
        arrays.append((image, lab) if split == "by-group" else None)
    channels = {r["channels"] for r in rows}
    if len(channels) > 1:
        problems.append(f"images with different channel counts {sorted(channels)}: "
                        + ", ".join(f"{r['image']} has {r['channels']}" for r in rows[:5]))
    if problems:
        raise ManifestError(out, problems)
    table = pd.DataFrame(rows)
    if split == "random":
        from .splits import assign_splits
        table["split"] = assign_splits(np.arange(len(table)), ["all"] * len(table), fractions, seed)
    elif split == "by-group":
        from .splits import grouped_manifest
        table, _ = grouped_manifest(table, [a[0] for a in arrays], [a[1] for a in arrays], seed=seed,
                                    fractions=fractions)
        table = table.drop(columns=["split_by_image"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
    return table
