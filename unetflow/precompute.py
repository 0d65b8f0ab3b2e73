"""Offline precomputation of the training targets into a content-addressed cache.

One cache entry per label file holds everything the training pipeline needs for that image, for
every task (:mod:`unetflow.tasks`): the relabelled instance ``labels`` plus each task's target
arrays (the unit ``flows`` (2, H, W), ``cellprob``, the 3-class ``boundary`` target, the
normalised ``distance``).  The key is a hash of the label file's bytes, the target parameters and
the algorithm versions (of the flows and of every task's targets), so:

* an unchanged label is skipped, a changed label or parameter is recomputed;
* one cache serves several manifests, and shards of one manifest never collide;
* entries are written under a temporary name and renamed, so an interrupted run leaves no
  half-written entry; an entry that fails to load or verify is recomputed, never returned.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_write, hash_file, read_labels
from .tasks import TASKS

__all__ = ["TargetParams", "TargetCache", "precompute", "PrecomputeSummary", "compute_targets"]

logger = logging.getLogger(__name__)

#: Bumped when the entry layout or the reading of label files changes (what every task's targets
#: start from); each task's own targets are versioned by its ``Task.version``.
CACHE_FORMAT_VERSION = "1"
#: The arrays of an entry: the labels and every task's targets.
ENTRY_KEYS = ("labels",) + tuple(dict.fromkeys(k for task in TASKS.values() for k in task.kinds))


@dataclass(frozen=True)
class TargetParams:
    """Parameters of the targets; every field is part of the cache key."""

    boundary_width: int = 1

    def key_material(self) -> dict:
        """What an entry's arrays depend on besides the label file's bytes: these parameters, the
        entry format and each task's target version."""
        return {"params": asdict(self), "format": CACHE_FORMAT_VERSION,
                "tasks": {name: task.version for name, task in sorted(TASKS.items())}}


def compute_targets(labels: np.ndarray, params: TargetParams = TargetParams()) -> dict:
    """All targets of one label image: the labels and every task's target arrays."""
    entry = {"labels": labels.astype(np.int32)}
    for task in TASKS.values():
        entry.update(task.make_targets(labels, params))
    return entry


class TargetCache:
    """A folder of precomputed target entries, addressed by content.

    Parameters
    ----------
    root : str or Path
        The cache folder (created when needed).
    params : TargetParams
        Target parameters; entries for other parameters live side by side.
    """

    def __init__(self, root, params: TargetParams = TargetParams()):
        self.root = Path(root)
        self.params = params

    def key(self, label_path) -> str:
        """The entry key of a label file: hash of its bytes and of the target parameters."""
        h = hash_file(label_path)
        h.update(json.dumps(self.params.key_material(), sort_keys=True).encode())
        return h.hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def _read_entry(self, path: Path, key: str):
        """The entry's arrays, or None if it is missing, corrupted or not this key's."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                entry = {k: z[k] for k in ENTRY_KEYS}  # reading every member checks its CRC
                stored_key = str(z["key"])
        except Exception as exc:
            logger.warning("cache entry %s is corrupted (%s): recomputing it", path, exc)
            return None
        shape = entry["labels"].shape
        if stored_key != key or any(a.shape[-2:] != shape for a in entry.values()):
            logger.warning("cache entry %s does not match its key or shapes: recomputing it", path)
            return None
        return entry

    def load(self, label_path, compute_missing: bool = True) -> dict:
        """The targets of a label file, computing and storing them if they are not cached."""
        key = self.key(label_path)
        entry = self._read_entry(self.entry_path(key), key)
        if entry is None:
            if not compute_missing:
                raise FileNotFoundError(f"{label_path}: no valid cache entry in {self.root}; run `unetflow precompute`")
            entry = self._compute_and_store(label_path, key)
        return entry

    def status(self, label_path) -> str:
        """'cached' or 'missing' (a corrupted entry counts as missing)."""
        key = self.key(label_path)
        return "cached" if self._read_entry(self.entry_path(key), key) is not None else "missing"

    def _compute_and_store(self, label_path, key: str) -> dict:
        entry = compute_targets(read_labels(label_path), self.params)
        atomic_write(self.entry_path(key),
                     lambda tmp: np.savez_compressed(tmp, key=np.array(key), **entry))
        return entry

    def ensure(self, label_path) -> str:
        """Make sure a valid entry exists; return 'skipped' or 'computed'."""
        key = self.key(label_path)
        if self._read_entry(self.entry_path(key), key) is not None:
            return "skipped"
        self._compute_and_store(label_path, key)
        return "computed"


@dataclass
class PrecomputeSummary:
    computed: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)  # label path -> reason

    def __str__(self):
        lines = [f"computed {self.computed}, skipped {self.skipped} (already cached), failed {len(self.failed)}"]
        lines += [f"  FAILED {p}: {why}" for p, why in self.failed.items()]
        return "\n".join(lines)


def _worker_init():
    # each worker process is one core's worth of work: no nested numba threads
    import numba
    numba.set_num_threads(1)


def _ensure_one(args):
    root, params, label_path = args
    try:
        return label_path, TargetCache(root, params).ensure(label_path), None
    except Exception as exc:  # one failing row must not stop the others
        return label_path, "failed", f"{type(exc).__name__}: {exc}"


def parse_shard(shard: str | None):
    """'i/n' (1-based i) to (i - 1, n); None to (0, 1)."""
    if not shard:
        return 0, 1
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 2/8), got {shard!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"--shard {shard!r}: need 1 <= i <= n")
    return i - 1, n


def precompute(label_paths, cache_dir, params: TargetParams = TargetParams(), *, workers: int = 1,
               shard: str | None = None, progress: bool = True) -> PrecomputeSummary:
    """Compute the targets of many label files into the cache.

    Parameters
    ----------
    label_paths : sequence of path
        Label files (duplicates are computed once).
    cache_dir : str or Path
    params : TargetParams
    workers : int
        Processes to use (each runs single-threaded numba).
    shard : str, optional
        ``"i/n"``: only every n-th label file starting at the i-th (1-based), so n jobs of a cluster
        scheduler split one manifest without overlap.
    progress : bool
        Show a tqdm progress bar.
    """
    from .progress import progress_bar

    k, n = parse_shard(shard)
    paths = sorted(dict.fromkeys(str(p) for p in label_paths))[k::n]
    summary = PrecomputeSummary()
    jobs = [(str(cache_dir), params, p) for p in paths]
    bar = progress_bar(total=len(jobs), desc="precompute targets", unit="img", enabled=progress)
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: forking a process whose numba OpenMP threads have run is unsafe
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, mp_context=ctx) as pool:
            results = pool.map(_ensure_one, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
            for res in results:
                _tally(summary, res)
                bar.update()
    else:
        for job in jobs:
            _tally(summary, _ensure_one(job))
            bar.update()
    bar.close()
    return summary


def _tally(summary, res):
    path, outcome, why = res
    if outcome == "failed":
        summary.failed[path] = why
    elif outcome == "computed":
        summary.computed += 1
    else:
        summary.skipped += 1


def cache_env_default() -> Path:
    """Default cache folder: $UNETFLOW_CACHE or ~/.cache/unetflow/targets."""
    return Path(os.environ.get("UNETFLOW_CACHE", Path.home() / ".cache" / "unetflow" / "targets"))
