"""Block-wise prediction of a huge synthetic mosaic on dask: seconds per megapixel and peak memory.

    python benchmarks/bench_big.py RUN_DIR [--size 12000] [--block-size 2048] [--workers 1] [--in-memory]

Writes a ``--size`` x ``--size`` tiled TIFF (a synthetic nuclei image repeated), segments it with
``unetflow.big.predict_big`` (the path of ``unetflow predict RUN BIG.tif --out OUT.zarr``), and prints
the wall time per megapixel and the peak resident memory of the whole process tree (this process and
the dask workers), sampled every 0.2 s.  With ``--in-memory`` the same image also goes through
``predict_instances`` in one piece, where it fits.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import print_table


class PeakRSS:
    """Peak resident memory (bytes) of this process and all its children, sampled in a thread."""

    def __init__(self, every=0.2):
        import psutil

        self.proc, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc] + self.proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self):
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._stop.clear()


def mosaic(path: Path, size: int, seed: int = 0) -> None:
    """A size x size uint16 tiled TIFF: one 1024 px synthetic nuclei image repeated."""
    import tifffile

    from unetflow.synthetic import synthetic_nuclei

    tile, _ = synthetic_nuclei(np.random.default_rng(seed), (1024, 1024))
    tile = (tile / tile.max() * 60000).astype(np.uint16)
    reps = -(-size // 1024)
    image = np.tile(tile, (reps, reps))[:size, :size]
    tifffile.imwrite(path, image, tile=(512, 512))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--size", type=int, default=12000)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--in-memory", action="store_true")
    args = ap.parse_args()

    from unetflow.big import predict_big

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.tif"
        mosaic(src, args.size)
        mpx = args.size ** 2 / 1e6
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            s = predict_big(args.run, src, Path(tmp) / "out.zarr", block_size=args.block_size, workers=args.workers)
            dt = time.perf_counter() - t0
        rows.append([f"block-wise ({s['blocks']} blocks of {args.block_size}, halo {s['halo']}, {args.workers} worker(s))",
                     f"{mpx:.0f}", s["objects"], f"{dt / mpx:.3f}", f"{mem.peak / 2 ** 30:.2f}"])
        if args.in_memory:
            import tifffile

            from unetflow.predict import load_run, predict_instances
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                labels, _ = predict_instances(load_run(args.run), tifffile.imread(src))
                dt = time.perf_counter() - t0
            rows.append(["in memory (predict_instances)", f"{mpx:.0f}", int(labels.max()), f"{dt / mpx:.3f}",
                         f"{mem.peak / 2 ** 30:.2f}"])
    print(f"\n{args.size} x {args.size} px synthetic mosaic, run {Path(args.run).name}\n")
    print_table(["path", "Mpx", "objects", "s/Mpx", "peak RSS of the process tree (GiB)"], rows)


if __name__ == "__main__":
    main()
