"""Numerical gradient checks for layers and losses (float64, every element, central differences).

A layer is checked on the scalar ``f(x, params) = sum(layer.forward(x) * G)`` for a random
upstream gradient ``G``: ``layer.backward(G)`` must equal the central difference
``(f(v + eps) - f(v - eps)) / (2 eps)`` for *every* element ``v`` of the input and of
every parameter. Layers compute in their input's dtype, so the check runs in float64
and a tight tolerance separates a real bug from rounding.

    >>> from dpnn import Conv2D
    >>> from dpnn.gradcheck import check_layer
    >>> report = check_layer(Conv2D(4, 3, stride=2), (2, 7, 7, 3))   # raises on a mismatch
    >>> report.max_abs < 1e-7
    True

``max_error`` prints one line per comparison, in the manner of llm.c's reference checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .losses import get_loss
from .random import sample_keys as make_sample_keys
from .recipe import loss_sum


class GradientMismatch(AssertionError):
    """An analytic gradient differs from its central-difference estimate."""


@dataclass
class GradReport:
    """Worst errors of one check; ``arrays`` maps 'x', 'W', ... to (max abs, max rel) error."""
    name: str
    max_abs: float = 0.0                      # largest |analytic - numeric| over every element
    max_rel: float = 0.0                      # largest error relative to max(|analytic|, |numeric|)
    arrays: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)   # one readable line per mismatching array

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        rows = [f"{self.name}: max abs {self.max_abs:.3e}, max rel {self.max_rel:.3e}"]
        rows += [f"  {k:<14} abs {a:.3e}  rel {r:.3e}" for k, (a, r) in self.arrays.items()]
        return "\n".join(rows + [f"  FAIL {f}" for f in self.failures])


def max_error(label: str, got, want, print_fn: Callable | None = print) -> float:
    """Largest absolute difference between two arrays, printed as ``label: max error ...``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"{label}: shapes differ, {got.shape} vs {want.shape}")
    err = float(np.abs(got - want).max()) if got.size else 0.0
    if print_fn is not None:
        print_fn(f"{label}: max error {err:.3e}")
    return err


def numerical_gradient(f: Callable[[], float], arr: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. every element of ``arr`` (perturbed in place).

    ``arr`` must be a contiguous float64 array that ``f`` reads; it is left unchanged.
    """
    assert arr.dtype == np.float64 and arr.flags.c_contiguous, "perturb a contiguous float64 array"
    flat, grad = arr.reshape(-1), np.zeros(arr.size)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad.reshape(arr.shape)


def compare(report: GradReport, key: str, analytic, numeric: np.ndarray,
            atol: float, rtol: float) -> None:
    """Record the errors of one array in ``report``; a mismatch means |a - n| > atol + rtol |n|."""
    if analytic is None or np.shape(analytic) != numeric.shape:
        report.failures.append(f"{key}: backward gave shape {np.shape(analytic)}, "
                               f"expected {numeric.shape}")
        return
    a = np.asarray(analytic, np.float64)
    err = np.abs(a - numeric)                                        # same shape as the array
    scale = np.maximum(np.abs(a), np.abs(numeric))
    rel = np.where(scale > atol, err / np.maximum(scale, 1e-300), 0.0)
    abs_max, rel_max = (float(err.max()), float(rel.max())) if err.size else (0.0, 0.0)
    report.arrays[key] = (abs_max, rel_max)
    report.max_abs, report.max_rel = max(report.max_abs, abs_max), max(report.max_rel, rel_max)
    bad = err > atol + rtol * np.abs(numeric)
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
        report.failures.append(f"{key}: {int(bad.sum())} of {err.size} elements differ; worst at "
                               f"{tuple(map(int, i))}: backward {a[i]:.9g}, numeric {numeric[i]:.9g}")


def separated_values(shape: tuple, rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    """Distinct float64 values in (-scale, scale), shuffled, at least 2*scale/size apart and
    never near zero: no ReLU kink or max-pooling tie lies within ``eps`` of any element."""
    n = int(np.prod(shape))
    grid = (np.arange(n) - (n - 1) / 2) / max(n / 2, 1) * scale          # symmetric, skips 0 when n even
    if n % 2:
        grid = grid + scale / (2 * n)                                     # odd n: move the middle off 0
    return rng.permutation(grid).reshape(shape)


def check_layer(layer, input_shape: tuple, *, seed: int = 0, eps: float = 1e-6,
                atol: float = 1e-6, rtol: float = 1e-5, training: bool = True,
                x: np.ndarray | None = None, sample_keys: np.ndarray | None = None,
                randomize_params: bool = True, raise_on_mismatch: bool = True,
                verbose: bool = False) -> GradReport:
    """Check ``layer.backward`` against central differences for input ``(N, ...) = input_shape``.

    The layer is built if needed and changed in place: its params become float64 (random
    normal values when ``randomize_params``; a gamma of ones would hide a missing factor).
    The input defaults to :func:`separated_values`, so ReLU and max pooling are
    differentiable at every point. Dropout gets fixed ``sample_keys`` (one mask throughout);
    ``training=False`` checks inference mode (BatchNorm's running statistics). State such
    as running statistics is restored afterwards. Raises :class:`GradientMismatch` unless
    ``raise_on_mismatch=False``; returns a :class:`GradReport` either way.
    """
    rng = np.random.default_rng(seed)
    input_shape = tuple(input_shape)
    if not layer.built:
        layer.rng = np.random.default_rng(seed)
        layer.build((None,) + input_shape[1:])
    for arrays in (layer.params, layer.grads, layer.state):
        for k, v in arrays.items():
            arrays[k] = np.ascontiguousarray(v, dtype=np.float64)
    if randomize_params:
        for p in layer.params.values():
            p[...] = rng.standard_normal(p.shape)
    state0 = {k: v.copy() for k, v in layer.state.items()}
    x = separated_values(input_shape, rng) if x is None else np.array(x, dtype=np.float64)
    if hasattr(layer, "sample_keys"):
        keys = make_sample_keys(seed, 0, np.arange(input_shape[0])) if sample_keys is None else sample_keys
        layer.sample_keys = keys
    layer.needs_input_grad = True

    def run() -> np.ndarray:
        for k, v in state0.items():             # training-mode forwards update running stats
            layer.state[k][...] = v
        return layer.forward(x, training)

    out = run()
    G = rng.standard_normal(out.shape)                                 # upstream gradient
    dx = layer.backward(G.copy())
    analytic = {"x": None if dx is None else np.array(dx, np.float64)}
    analytic.update({k: np.array(g, np.float64) for k, g in layer.grads.items()})

    def f() -> float:
        return float(np.sum(run() * G))

    name = f"{layer!r} on {input_shape}" + ("" if training else " (inference)")
    report = GradReport(name)
    compare(report, "x", analytic["x"], numerical_gradient(f, x, eps), atol, rtol)
    for key, p in layer.params.items():
        compare(report, key, analytic[key], numerical_gradient(f, p, eps), atol, rtol)
    if report.failures and out.dtype != np.float64:       # the usual cause: say it with the failure
        report.failures.append(f"note: the check runs in float64 (input, parameters and gradients), but the "
                               f"layer returned {out.dtype}: its rounding is what differs; compute in the "
                               "input's dtype (e.g. np.zeros(..., dtype=x.dtype)) and check again")
    run()
    return _finish(report, verbose, raise_on_mismatch)


def check_loss(loss, shape: tuple, labels, *, seed: int = 0, eps: float = 1e-6,
               atol: float = 1e-7, rtol: float = 1e-5, denominator: float | None = None,
               raise_on_mismatch: bool = True, verbose: bool = False) -> GradReport:
    """Check ``loss.backward(denominator)`` against central differences for predictions of ``shape``.

    ``loss`` is a name ('cce', 'mse') or an instance; ``labels`` are integer classes (N,),
    one-hot rows or regression targets. The scalar differentiated is the sum of per-sample
    losses divided by ``denominator`` (default N: the mean the loss returns).
    """
    loss = get_loss(loss)
    rng = np.random.default_rng(seed)
    y_pred = rng.standard_normal(shape)                                # (N, K) float64
    N = shape[0]

    def f() -> float:
        return loss_sum(loss, loss.forward(y_pred, labels), N) / (denominator or N)

    f()
    analytic = loss.backward(denominator)
    report = GradReport(f"{type(loss).__name__} on {tuple(shape)}")
    compare(report, "y_pred", analytic, numerical_gradient(f, y_pred, eps), atol, rtol)
    return _finish(report, verbose, raise_on_mismatch)


def _finish(report: GradReport, verbose: bool, raise_on_mismatch: bool) -> GradReport:
    if verbose:
        print(report)
    if raise_on_mismatch and not report.ok:
        raise GradientMismatch(str(report))
    return report
