"""Set BLAS thread counts on import (before NumPy loads), unless the user already did."""
from __future__ import annotations

import os

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def usable_cores() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return os.cpu_count() or 1


def configure_threads(environ=os.environ) -> dict[str, str]:
    """Fill unset BLAS thread variables with the usable core count; DPNN_DISABLE_AUTO_THREADS=1 skips."""
    if environ.get("DPNN_DISABLE_AUTO_THREADS") == "1":
        return {}
    n = str(usable_cores())
    return {k: environ.setdefault(k, n) for k in BLAS_THREAD_VARS if k not in environ}
