"""Progress of long work: a live bar on a terminal, one line when done in a log file or pipe.

A tqdm bar redraws itself with carriage returns; written to a log that is not a terminal, it leaves
hundreds of partial lines per loop.  :func:`progress` gives tqdm's bar on a terminal and, anywhere
else, a quiet counter that logs a single line (``desc: n unit in t s``) when it is closed or its
iterable is exhausted.  Keras' own per-step bar follows the same rule (:func:`fit_verbosity`).
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("unetflow")


def is_terminal(stream=None) -> bool:
    """Whether `stream` (default: stderr, where bars are drawn) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def fit_verbosity(progress: bool, stream=None) -> int:
    """Keras ``fit``'s `verbose`: its per-step bar on a terminal, one line per epoch in a log file
    or pipe, nothing without progress."""
    if not progress:
        return 0
    return 1 if is_terminal(stream if stream is not None else sys.stdout) else 2


class _Summary:
    """tqdm's interface (iteration, ``update``, ``close``, context manager) drawing nothing, and
    logging one line at the end."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it"):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self._start, self._closed = 0, time.perf_counter(), False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1):
        self.n += n

    def close(self):
        if not self._closed:
            self._closed = True
            log.info("%s: %d %s in %.1f s", self.desc, self.n, self.unit, time.perf_counter() - self._start)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(iterable=None, *, desc: str, total=None, unit: str = "it", enabled: bool = True, stream=None, **tqdm_kw):
    """A progress bar over `iterable` (or one to ``update`` by hand when it is None).

    Parameters
    ----------
    iterable : iterable, optional
    desc, total, unit :
        As for tqdm.
    enabled : bool
        False: no output at all.
    stream : file, optional
        Where the bar goes (default stderr); decides terminal or not.
    **tqdm_kw
        Passed to tqdm on a terminal (e.g. ``unit_scale=True``).
    """
    if enabled and is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream, **tqdm_kw)
    if not enabled:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, disable=True)
    return _Summary(iterable, total=total, desc=desc, unit=unit)
