"""Where a step's samples come from: rows copied by the coordinator, or indices into data
placed in shared memory once.

Two ways to give the workers a batch::

    train_step(x, y, keys)     the coordinator copies the rows into ``x``/``y`` (capacity grows)
    place_data(X, Y) once,     the whole training set goes to ``data_x``/``data_y`` once; per
    train_rows(idx, keys)      step only the indices (and keys) are written to ``rows``, and
                               each worker gathers its own shard's rows (``gather``)

The second is what ``fit`` uses: the coordinator's per-step work no longer grows with the
image size, and the gathering is spread over the workers. Validation data is placed the same
way (``eval_x``/``eval_y``) and scored by the workers, each on its slice.
"""
from __future__ import annotations

import numpy as np

ROWS, KEYS = "rows", "keys"


class BatchLoader:
    """The coordinator's side: fills the arena's batch regions; ``rows_copied`` counts the
    sample rows it copied itself (0 on the placed-data path)."""

    def __init__(self, arena, input_shape: tuple) -> None:
        self.arena, self.input_shape = arena, tuple(input_shape)
        self.rows_copied = 0
        self.placed = self.eval_source = None

    def _fit(self, name: str, shape: tuple, dtype) -> bool:
        """Give region ``name`` at least this shape (first axis) and exactly this tail/dtype."""
        a, dtype = self.arena, np.dtype(dtype)
        if name in a:
            have = a[name]
            if have.shape[0] >= shape[0] and have.shape[1:] == shape[1:] and have.dtype == dtype:
                return False
        a.ensure(name, shape, dtype)
        return True

    def load_arrays(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray) -> bool:
        """Copy a batch into ``x``/``y``/``keys``; True if a region was (re)allocated."""
        n = len(x)
        grown = self._copy_set("x", "y", x, y) | self._fit(KEYS, (n,), np.uint64)
        np.copyto(self.arena[KEYS][:n], np.asarray(keys, np.uint64))
        self.rows_copied += n
        return grown

    def place(self, X: np.ndarray, Y: np.ndarray) -> bool:
        """Put the training set in ``data_x``/``data_y`` (once per set: the same arrays again cost nothing)."""
        if self.placed is not None and self.placed[0] is X and self.placed[1] is Y:
            return False
        grown = self._copy_set("data_x", "data_y", X, Y)
        self.placed = (X, Y)
        return grown

    def load_rows(self, indices: np.ndarray, keys: np.ndarray) -> bool:
        """Write the step's indices (into the placed data) and keys; True if a region grew."""
        assert self.placed is not None, "place_data first"
        n = len(indices)
        grown = self._fit(ROWS, (n,), np.int64) | self._fit(KEYS, (n,), np.uint64)
        np.copyto(self.arena[ROWS][:n], indices)
        np.copyto(self.arena[KEYS][:n], np.asarray(keys, np.uint64))
        return grown

    def place_eval(self, x: np.ndarray, y: np.ndarray | None, outputs: tuple | None = None) -> bool:
        """Put a validation/test set in ``eval_x``/``eval_y`` unless these arrays are there already
        (``y`` None: inputs only, for predict); ``outputs``: also an ``eval_out`` (N, *outputs)."""
        grown = False
        if outputs is not None:
            grown = self._fit("eval_out", (len(x),) + tuple(outputs), np.float32)
        if self.eval_source is not None and self.eval_source[0] is x and self.eval_source[1] is y:
            return grown
        if y is None:
            grown |= self._fit("eval_x", (len(x),) + self.input_shape, np.float32)
            np.copyto(self.arena["eval_x"][:len(x)], x, casting="same_kind")
        else:
            grown |= self._copy_set("eval_x", "eval_y", x, y)
        self.eval_source = (x, y)
        return grown

    def _copy_set(self, x_name: str, y_name: str, X: np.ndarray, Y: np.ndarray) -> bool:
        """Inputs into region ``x_name`` (as float32) and labels into ``y_name``; True if one grew."""
        n = len(X)
        grown = self._fit(x_name, (n,) + self.input_shape, np.float32)
        grown |= self._fit(y_name, (n,) + Y.shape[1:], Y.dtype)
        np.copyto(self.arena[x_name][:n], X, casting="same_kind")
        np.copyto(self.arena[y_name][:n], Y)
        return grown


class RowGatherer:
    """A worker's side of the placed-data path: its shard's rows, gathered into private buffers
    that are reused across steps."""

    def __init__(self) -> None:
        self._x = self._y = None

    def gather(self, arena, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of rows ``rows[a:b]`` of ``data_x``/``data_y``: (b-a, ...) arrays."""
        idx = arena[ROWS][a:b]
        self._x = _room(self._x, arena["data_x"], len(idx))
        self._y = _room(self._y, arena["data_y"], len(idx))
        x, y = self._x[:len(idx)], self._y[:len(idx)]
        np.take(arena["data_x"], idx, axis=0, out=x)
        np.take(arena["data_y"], idx, axis=0, out=y)
        return x, y


def _room(buf: np.ndarray | None, like: np.ndarray, n: int) -> np.ndarray:
    if buf is None or len(buf) < n or buf.shape[1:] != like.shape[1:] or buf.dtype != like.dtype:
        return np.empty((n,) + like.shape[1:], like.dtype)
    return buf
