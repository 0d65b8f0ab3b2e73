"""What the machine can do fast: native bfloat16 on the CPU.

On a CPU with AVX512-BF16 (or AMX-BF16) a bfloat16 U-Net step is 1.4-1.7x faster than float32; on
one with only AVX2, TensorFlow emulates bfloat16 and the same step is about 8x *slower*.  So
bfloat16 is chosen from the CPU's flags, never assumed.  No TensorFlow import here.
"""
from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["cpu_flags", "native_bfloat16", "resolve_mixed_precision", "inference_policy", "PRECISIONS",
           "INFERENCE_PRECISIONS", "import_tensorflow"]

#: Values of ``train.mixed_precision``.
PRECISIONS = (None, "auto", "mixed_bfloat16", "mixed_float16")
#: CPU flags (Linux /proc/cpuinfo names) that mean bfloat16 arithmetic in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags (empty where /proc/cpuinfo cannot be read, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bfloat16(flags=None) -> bool:
    """True when the CPU computes bfloat16 in hardware."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def resolve_mixed_precision(value, flags=None):
    """A Keras mixed-precision policy name (or None for float32) from a config value.

    ``"auto"`` is ``"mixed_bfloat16"`` on a CPU with native bfloat16 and float32 (None) otherwise.

    Examples
    --------
    >>> resolve_mixed_precision("auto", flags={"avx2", "avx512_bf16"})
    'mixed_bfloat16'
    >>> resolve_mixed_precision("auto", flags={"avx2"}) is None
    True
    """
    if value not in PRECISIONS:
        raise ValueError(f"mixed precision must be one of {PRECISIONS}, got {value!r}")
    if value == "auto":
        return "mixed_bfloat16" if native_bfloat16(flags) else None
    return value


#: Values of ``--precision`` for prediction.
INFERENCE_PRECISIONS = ("float32", "bfloat16", "auto")


def inference_policy(precision: str = "float32", flags=None) -> str:
    """The Keras dtype policy a loaded network computes with (its head always stays float32).

    Examples
    --------
    >>> inference_policy("auto", flags={"avx2"})
    'float32'
    >>> inference_policy("bfloat16")
    'mixed_bfloat16'
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"`precision` must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "mixed_bfloat16" if native_bfloat16(flags) else "float32"
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"


def import_tensorflow(verbose: bool = False):
    """Import TensorFlow, hiding its C++ start-up lines unless `verbose`, and say where it computes.

    TensorFlow writes oneDNN, CUDA-stub and CPU-feature notices, and on a machine without a GPU an
    ``E0000 ... failed call to cuInit`` line that reads like a failure, straight to file descriptor 2
    before its logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` alone does not silence them: the import
    runs with descriptor 2 pointed at a temporary file, shown only if the import fails.

    Returns
    -------
    str
        One line naming the device that runs the network, e.g. ``"CPU (2 cores, native bfloat16)"``.
    """
    import os
    import sys
    import tempfile

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if verbose or "tensorflow" in sys.modules:
        import tensorflow as tf
    else:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                import tensorflow as tf
                tf.config.list_physical_devices()  # the CUDA probe happens here, still silenced
            except BaseException:
                os.dup2(saved, 2)
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"GPU ({', '.join(g.name.split(':', 1)[-1] for g in gpus)})"
    native = "native bfloat16" if native_bfloat16() else "no native bfloat16: float32"
    return f"CPU ({os.cpu_count()} cores, {native})"
