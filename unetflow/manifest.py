"""``data_manifest.csv``: which images and labels make up a data set, and how they are split.

Required columns: ``image``, ``label``, ``split`` (train / val / test).  Optional: ``channels``
(number of image channels; checked when present).  Any other column is free metadata (for
example ``modality``) and is carried along.  Paths are relative to a data root chosen, in order,
by the ``data_root`` argument (config or command line), the ``UNETFLOW_DATA`` environment
variable, or the manifest's own folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .conventions import SPLITS
from .io import hash_file

__all__ = ["Manifest", "ManifestError", "read_manifest", "find_manifest", "resolve_data_root", "SPLITS", "DATA_ENV"]

REQUIRED_COLUMNS = ("image", "label", "split")
DATA_ENV = "UNETFLOW_DATA"


class ManifestError(ValueError):
    """A manifest with problems; ``problems`` lists every one of them."""

    def __init__(self, path, problems):
        self.path = path
        self.problems = list(problems)
        shown = "\n  - ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{path}: {len(self.problems)} problem(s) in the manifest:\n  - {shown}{more}")


def resolve_data_root(manifest_path, data_root=None) -> Path:
    """The folder the manifest's paths are relative to: argument, then $UNETFLOW_DATA, then the
    manifest's folder."""
    if data_root:
        return Path(data_root).expanduser().resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    return Path(manifest_path).resolve().parent


def find_manifest(manifest, data_root=None) -> Path:
    """The manifest file a config names: a relative path is looked up in the data folder
    (`data_root`, then ``$UNETFLOW_DATA``) first, so a data set that carries its own
    ``manifest.csv`` needs only its folder; then relative to the current directory.

    Raises
    ------
    FileNotFoundError
        Naming every place looked in.
    """
    manifest = Path(manifest).expanduser()
    folder = data_root or os.environ.get(DATA_ENV)
    candidates = [manifest] if manifest.is_absolute() else [
        *([Path(folder).expanduser() / manifest] if folder else []), manifest]
    for path in candidates:
        if path.is_file():
            return path
    where = " or ".join(str(p) for p in candidates)
    hint = "" if folder else f" (set ${DATA_ENV} or data.root to the data folder that holds it)"
    raise FileNotFoundError(f"{manifest}: manifest not found: looked for {where}{hint}")


@dataclass
class Manifest:
    """A validated manifest: its table, where it came from, and the data root."""

    table: pd.DataFrame
    path: Path
    root: Path

    def image_path(self, i: int) -> Path:
        return self.root / self.table["image"].iloc[i]

    def label_path(self, i: int) -> Path:
        return self.root / self.table["label"].iloc[i]

    def split(self, name: str) -> "Manifest":
        """The rows of one split (a new Manifest with the same root)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        rows = self.table[self.table["split"] == name].reset_index(drop=True)
        if rows.empty:
            raise ValueError(f"{self.path}: the manifest has no rows in split {name!r}")
        return Manifest(rows, self.path, self.root)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def sha256(self) -> str:
        """Hash of the manifest file's bytes, written into run directories for traceability."""
        return hash_file(self.path).hexdigest()


def read_manifest(path, data_root=None, *, check_files: bool = True, check_shapes: bool = False) -> Manifest:
    """Read and validate a manifest, reporting every problem at once.

    Parameters
    ----------
    path : str or Path
        The CSV file.
    data_root : str or Path, optional
        Folder the paths are relative to (see :func:`resolve_data_root`).
    check_files : bool
        Check that every image and label file exists.
    check_shapes : bool
        Also read the image and label headers and check that their shapes agree (and the channel
        count, when a ``channels`` column is present).  Slower: it reads every file.

    Raises
    ------
    FileNotFoundError
        If the manifest itself does not exist.
    ManifestError
        Listing all problems found: missing columns, empty cells, unknown splits, duplicate rows,
        missing files, shape mismatches.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        table = pd.read_csv(path, dtype={"image": str, "label": str, "split": str})
    except Exception as exc:
        raise ManifestError(path, [f"cannot be parsed as CSV: {exc}"]) from exc
    root = resolve_data_root(path, data_root)
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(path, [f"missing required column(s) {missing}; found {list(table.columns)}"])
    if table.empty:
        raise ManifestError(path, ["the manifest has no rows"])
    for col in REQUIRED_COLUMNS:
        for i in np.flatnonzero(table[col].isna().to_numpy()):
            problems.append(f"row {i + 2}: empty `{col}`")
    bad_split = ~table["split"].isin(SPLITS) & table["split"].notna()
    for i in np.flatnonzero(bad_split.to_numpy()):
        problems.append(f"row {i + 2}: unknown split {table['split'].iloc[i]!r} (expected one of {SPLITS})")
    for col in ("image", "label"):
        dup = table[col].duplicated(keep="first") & table[col].notna()
        for i in np.flatnonzero(dup.to_numpy()):
            problems.append(f"row {i + 2}: duplicate `{col}` {table[col].iloc[i]!r}")
    manifest = Manifest(table, path, root)
    if check_files:
        for i in range(len(table)):
            for col in ("image", "label"):
                if pd.isna(table[col].iloc[i]):
                    continue
                f = root / table[col].iloc[i]
                if not f.is_file():
                    problems.append(f"row {i + 2}: {col} file not found: {f}")
    if check_shapes and not problems:
        problems += _shape_problems(manifest)
    if problems:
        hint = "" if (root / str(table["image"].iloc[0])).exists() else (
            f" (data root {root}: set it with --data, the config's data.root, or ${DATA_ENV})")
        if hint:
            problems.append("data root" + hint)
        raise ManifestError(path, problems)
    return manifest


def _shape_problems(manifest: Manifest):
    import tifffile

    def shape_of(p):
        if p.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(p) as tf:
                return tuple(tf.series[0].shape)
        import imageio.v3 as iio
        return tuple(iio.improps(p).shape)

    problems = []
    has_channels = "channels" in manifest.table.columns
    for i in range(len(manifest)):
        try:
            ishape = shape_of(manifest.image_path(i))
            lshape = shape_of(manifest.label_path(i))
        except Exception as exc:
            problems.append(f"row {i + 2}: cannot read header: {exc}")
            continue
        if ishape[:2] != lshape[:2]:
            problems.append(f"row {i + 2}: image {manifest.table['image'].iloc[i]} has shape {ishape} "
                            f"but label {manifest.table['label'].iloc[i]} has shape {lshape}")
        if has_channels and not pd.isna(manifest.table["channels"].iloc[i]):
            nch = ishape[2] if len(ishape) == 3 else 1
            if nch != int(manifest.table["channels"].iloc[i]):
                problems.append(f"row {i + 2}: image has {nch} channel(s), manifest says "
                                f"{int(manifest.table['channels'].iloc[i])}")
    return problems
