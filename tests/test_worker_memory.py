"""Workers keep the memory they free for the next step (glibc): no block gets its own mmap.

A fresh process's glibc maps every large block on its own and unmaps it at free, so each step
of a worker faulted its temporaries in again (``keep_freed_memory`` in worker.py). A layer of
the user's reads glibc's own count of mmapped bytes inside a worker while it holds a 40 MB
array, above glibc's largest automatic threshold (32 MiB): without the setting it gets its own
mapping (the test then fails: checked), with it the heap serves it.
"""
import ctypes

import numpy as np
import pytest

from dpnn import Flatten, Layer, Model
from dpnn.workers import DataParallel


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def _mapped_bytes() -> int:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblkhd


class MappedWhileHolding(Layer):
    """Outputs how many more bytes glibc has mmapped while a 40 MB array is alive."""

    def build(self, input_shape):
        self.output_shape = (input_shape[0], 1)
        self.built = True

    def forward(self, x, training=False):
        before = _mapped_bytes()
        big = np.ones(10 << 20, np.float32)
        grown = _mapped_bytes() - before
        del big
        return np.full((len(x), 1), grown, np.float32)


def test_a_worker_serves_large_blocks_from_its_heap():
    try:
        _mapped_bytes()
    except AttributeError:
        pytest.skip("not glibc >= 2.33 (no mallinfo2): workers leave malloc as it is")
    m = Model([Flatten(), MappedWhileHolding()], seed=0).compile(optimizer="sgd")
    m.build((1, 4))
    x = np.ones((4, 4), np.float32)
    with DataParallel(m, workers=1, pin=False) as dp:
        assert np.all(dp.predict(x) == 0)            # the worker: from the heap, kept after free
