"""Block-wise prediction of a huge synthetic mosaic (or stack) on dask: seconds per megapixel and peak memory.

    python benchmarks/bench_big.py RUN_DIR [--size 12000] [--block-size 2048] [--workers 1] [--in-memory]
    python benchmarks/bench_big.py nuclei --depth 128 --size 512 --block-size 128 [--in-memory]

Writes a ``--size`` x ``--size`` tiled TIFF (a synthetic nuclei image repeated), segments it with
``unetflow.big.predict_big`` (the path of ``unetflow predict RUN BIG.tif --out OUT.zarr``), and prints
the wall time per megapixel and the peak resident memory of the whole process tree (this process and
the dask workers), sampled every 0.2 s.  With ``--in-memory`` the same image also goes through
``predict_instances`` in one piece, where it fits.  With ``--depth Z`` the input is a ``(Z, size,
size)`` stack of 17 px spheres at anisotropy 2 (an ImageJ stack with its voxel size), segmented with
``volume=True`` (``predict --3d --out OUT.zarr``) and in memory with ``predict_volume``.
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


def sphere_stack(path: Path, depth: int, size: int, seed: int = 0) -> None:
    """A (depth, size, size) uint16 ImageJ stack, voxel size 0.5 x 0.25 x 0.25 um (anisotropy 2): bright
    spheres of 17 px across in y and x on a grid 24 px apart, jittered, with noise."""
    from unetflow.io import write_volume_labels

    rng = np.random.default_rng(seed)
    stack = np.full((depth, size, size), 20.0, np.float32)
    for cz in range(6, depth - 5, 12):  # 24 px apart in isotropic z is 12 slices
        for cy in range(12, size - 11, 24):
            for cx in range(12, size - 11, 24):
                jz, jy, jx = rng.uniform(-1, 1, 3) * (1, 2, 2)
                z, y, x = np.ogrid[cz - 5:cz + 6, cy - 11:cy + 12, cx - 11:cx + 12]
                inside = (2 * (z - cz - jz)) ** 2 + (y - cy - jy) ** 2 + (x - cx - jx) ** 2 <= 8.5 ** 2
                stack[cz - 5:cz + 6, cy - 11:cy + 12, cx - 11:cx + 12][inside] = 200.0
    stack += rng.normal(0, 5, stack.shape)
    write_volume_labels(path, np.clip(stack, 0, None).astype(np.uint16), (0.5, 0.25, 0.25))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--size", type=int, default=12000)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--in-memory", action="store_true")
    ap.add_argument("--depth", type=int, help="a (DEPTH, size, size) stack of spheres instead of a mosaic")
    args = ap.parse_args()

    from unetflow.big import predict_big

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.tif"
        if args.depth:
            sphere_stack(src, args.depth, args.size)
        else:
            mosaic(src, args.size)
        mpx = args.size ** 2 * (args.depth or 1) / 1e6
        volume = dict(volume=True, diameter=17) if args.depth else {}
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            s = predict_big(args.run, src, Path(tmp) / "out.zarr", block_size=args.block_size, workers=args.workers,
                            **volume)
            dt = time.perf_counter() - t0
        rows.append([f"block-wise ({s['blocks']} blocks of {args.block_size}, halo {' x '.join(map(str, s['halo']))}, {args.workers} worker(s))",
                     f"{mpx:.0f}", s["objects"], f"{dt / mpx:.3f}", f"{mem.peak / 2 ** 30:.2f}"])
        if args.in_memory:
            import tifffile

            from unetflow.predict import load_run, predict_instances
            from unetflow.volume import predict_volume
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                if args.depth:
                    labels, _ = predict_volume(load_run(args.run), tifffile.imread(src), anisotropy=2.0, diameter=17)
                else:
                    labels, _ = predict_instances(load_run(args.run), tifffile.imread(src))
                dt = time.perf_counter() - t0
            rows.append([f"in memory ({'predict_volume' if args.depth else 'predict_instances'})", f"{mpx:.0f}",
                         int(labels.max()), f"{dt / mpx:.3f}", f"{mem.peak / 2 ** 30:.2f}"])
    what = f"{args.depth} x {args.size} x {args.size} voxel stack of spheres" if args.depth else \
        f"{args.size} x {args.size} px synthetic mosaic"
    print(f"\n{what}, run {Path(args.run).name}\n")
    print_table(["path", "Mpx" if not args.depth else "Mvoxel", "objects", "s/Mpx" if not args.depth else "s/Mvoxel",
                 "peak RSS of the process tree (GiB)"], rows)


if __name__ == "__main__":
    main()
