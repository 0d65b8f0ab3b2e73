"""Shared helpers of the benchmark scripts: finding the data, calling a reference venv, tables."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dsb2018_stage1_train"


def data_root(arg=None) -> Path:
    root = Path(arg or os.environ.get("UNETFLOW_DATA") or DEFAULT_DATA)
    if not (root / "manifest.csv").is_file() and not (root / "labels").is_dir():
        sys.exit(f"no DSB data at {root}: pass --data or set UNETFLOW_DATA")
    return root


def label_files(root: Path, limit=None):
    files = sorted((root / "labels").glob("*.tif"))
    return files[:limit] if limit else files


def run_reference(python: str | None, mode: str, inputs):
    """Run ``_reference_worker.py`` in another venv; return its npz (times, results) or None."""
    if not python:
        return None
    if not Path(python).exists():
        print(f"(reference python {python} not found: skipped)", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "list.txt"
        lst.write_text("\n".join(str(p) for p in inputs))
        out = Path(tmp) / "out.npz"
        subprocess.run([python, str(HERE / "_reference_worker.py"), mode, str(lst), str(out)], check=True)
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def print_table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
