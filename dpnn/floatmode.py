"""Flush-to-zero: no float32 denormals in any process dpnn computes in.

Adam's moments of units that rarely fire decay geometrically through the subnormal range
(below 1.2e-38 in float32), where every x86 multiply or add that touches such a value takes
a microcode assist, ~100 cycles instead of a few: after a few epochs of seed-cnn 40 % of the
first moment is denormal and a training step is a third slower (issue 22). With the CPU told
to flush results to zero (FTZ) and to read denormal inputs as zero (DAZ), those values are
simply 0 — a relative change below 1e-38 to an update, and the speed of epoch 1 in epoch 5.

``import dpnn`` turns flushing on before NumPy is imported, so OpenBLAS's threads (created
when NumPy loads) inherit it; threads and forked children inherit the mode on Linux, and a
worker process applies its coordinator's mode when it starts (``WorkerSpec.flush_denormals``).
``DPNN_DENORMALS=keep`` in the environment (read at import) or ``set_flush_denormals(False)``
keeps IEEE denormals.

Where: Linux on x86-64 and aarch64 (``_LAYOUTS``), through the C library's ``fegetenv``/
``fesetenv``; elsewhere arithmetic stays IEEE. Nothing here imports NumPy, so it can run first.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import warnings

ENV_VAR = "DPNN_DENORMALS"            # 'flush' (the default) or 'keep' (IEEE denormals)
FLUSH_VALUES = ("", "flush", "ftz", "on", "1")
KEEP_VALUES = ("keep", "ieee", "off", "0")
ENV_BYTES = 64                        # room for fenv_t (32 bytes on x86-64, 8 on aarch64)

# (OS, machine) -> (byte offset of the control register in the C library's fenv_t, its width,
# the bits that flush). x86-64: MXCSR, FTZ = bit 15, DAZ = bit 6 (glibc and musl: after the
# 28-byte x87 environment). aarch64: FPCR at offset 0, FZ = bit 24 (flushes inputs and results).
_LAYOUTS = {
    ("Linux", "x86_64"): (28, 4, (1 << 15) | (1 << 6)),
    ("Linux", "aarch64"): (0, 4, 1 << 24),
}


def _layout() -> tuple[int, int, int] | None:
    return _LAYOUTS.get((platform.system(), platform.machine()))


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _read_env():
    """(fenv_t buffer, its control word, (offset, width, bits)) of the calling thread, or None
    where the mode cannot be read (no libc, an unknown fenv_t layout)."""
    layout, libc = _layout(), _libc()
    if layout is None or libc is None:
        return None
    buf = ctypes.create_string_buffer(ENV_BYTES)
    if libc.fegetenv(buf) != 0:
        return None
    offset, width, _ = layout
    return buf, int.from_bytes(buf.raw[offset:offset + width], sys.byteorder), layout


def _control_word() -> int | None:
    """This thread's floating-point control register, or None where it cannot be read."""
    env = _read_env()
    return None if env is None else env[1]


def available() -> bool:
    """True where this process can switch flush-to-zero (Linux on x86-64 or aarch64)."""
    return _control_word() is not None


def flush_denormals_enabled() -> bool:
    """Whether the calling thread flushes denormals now (read from the CPU's control register)."""
    word, layout = _control_word(), _layout()
    return word is not None and word & layout[2] == layout[2]


def _write(on: bool) -> bool:
    """Set or clear the flush bits of the calling thread; False where that is not possible."""
    env = _read_env()
    if env is None:
        return False
    buf, word, (offset, width, bits) = env
    word = word | bits if on else word & ~bits
    ctypes.memmove(ctypes.addressof(buf) + offset, word.to_bytes(width, sys.byteorder), width)
    return _libc().fesetenv(buf) == 0 and flush_denormals_enabled() == on


def restart_blas_threads() -> int:
    """Stop OpenBLAS's thread pool so it restarts, from this thread, with this thread's mode.

    A thread keeps the floating-point mode it was created with; OpenBLAS creates its pool when
    NumPy loads and restarts it on the next parallel call after ``blas_thread_shutdown_`` (what
    it does itself around ``fork``). Only call it while no BLAS call is running. Returns how many
    OpenBLAS libraries were restarted (0 before NumPy is loaded, or with another BLAS).
    """
    if "numpy" not in sys.modules:
        return 0                       # no pool yet: it will be created with the current mode
    from threadpoolctl import threadpool_info
    restarted = 0
    for info in threadpool_info():
        if info.get("internal_api") != "openblas" or info.get("threading_layer") != "pthreads":
            continue
        try:
            shutdown = ctypes.CDLL(info["filepath"]).blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        shutdown()
        restarted += 1
    return restarted


def set_flush_denormals(on: bool) -> bool:
    """Flush denormals to zero (``True``) or keep IEEE denormals (``False``) in this process.

    Sets the calling thread's mode and, when it changed and NumPy is loaded, restarts OpenBLAS's
    threads so that they run in it too (threads started later inherit it). Call it from the main
    thread before training; worker processes started afterwards take the mode of the process
    that starts them. Returns whether denormals are flushed now (False where not available).
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_flush_denormals takes True or False, got {on!r}")
    before = flush_denormals_enabled()
    if not _write(on):
        return flush_denormals_enabled()
    if before != on:
        restart_blas_threads()
    return on


def describe() -> str:
    """One phrase for run summaries: 'denormals flushed (FTZ/DAZ)' or 'IEEE denormals'."""
    if flush_denormals_enabled():
        return "denormals flushed (FZ)" if _layout()[2] == 1 << 24 else "denormals flushed (FTZ/DAZ)"
    return "IEEE denormals" if available() else "IEEE denormals (flushing not available here)"


def requested_mode(environ=os.environ) -> bool:
    """``DPNN_DENORMALS`` as a bool: True (flush, the default) or False ('keep'); an unknown
    value warns and flushes."""
    value = environ.get(ENV_VAR, "").strip().lower()
    if value in KEEP_VALUES:
        return False
    if value not in FLUSH_VALUES:
        warnings.warn(f"{ENV_VAR}={environ[ENV_VAR]!r} is not one of 'flush' or 'keep'; flushing "
                      "denormals (set it to 'keep' for IEEE denormals)", RuntimeWarning, stacklevel=3)
    return True


def configure_denormals(environ=os.environ) -> bool:
    """At ``import dpnn``: apply ``DPNN_DENORMALS`` (flush unless 'keep'); returns the mode now."""
    return set_flush_denormals(requested_mode(environ))
