"""What a callback watches: one figure of the epoch logs, and which way is better (Keras's
``MonitorCallback``: ``monitor``, ``mode``, ``min_delta``, ``baseline``)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from .base import KERAS_NAMES, Callback

MODES = ("auto", "min", "max")
HIGHER_IS_BETTER = ("acc", "accuracy")
LOWER_IS_BETTER = ("loss",)


def monitored(logs: dict, monitor: str | None = None) -> tuple[str, float]:
    """dpnn's default figure, higher is better: ``monitor`` (a loss is negated), else val_acc,
    else acc, else -loss."""
    if monitor is not None:
        key = KERAS_NAMES.get(monitor, monitor)
        value = float(logs.get(key, math.nan))
        return key, -value if key.endswith("loss") else value
    for key in ("val_acc", "acc"):
        v = logs.get(key)
        if v is not None and not math.isnan(v):
            return key, float(v)
    key = "val_loss" if logs.get("val_loss") is not None else "loss"
    return key, -float(logs[key])


def direction(monitor: str, mode: str, who: str) -> str:
    """'min' or 'max' for ``monitor`` in ``mode``; 'auto' reads it from the name, as Keras does."""
    if mode not in MODES:
        raise ValueError(f"{who}(mode={mode!r}): choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name in LOWER_IS_BETTER:
        return "min"
    if name in HIGHER_IS_BETTER:
        return "max"
    raise ValueError(f"{who} callback received monitor={monitor!r}, but dpnn cannot tell whether it "
                     "should be maximized or minimized; pass mode='max' or mode='min' (its logs hold "
                     "loss, accuracy (acc) and, with validation data, val_loss, val_accuracy)")


class MonitorCallback(Callback):
    """A callback that watches ``logs[monitor]`` at each epoch end: ``monitor_op`` (np.less or
    np.greater, from ``mode``), ``min_delta`` (an improvement must beat the reference by it) and
    ``best`` (None, or a number that is not finite: none yet). ``monitor=None`` is dpnn's
    default figure (val_accuracy with validation data, else accuracy; see :func:`monitored`)."""

    def __init__(self, monitor: str | None = "val_loss", mode: str = "auto", min_delta: float = 0.0,
                 baseline: float | None = None) -> None:
        who = type(self).__name__
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"{who}(monitor=...) must be a name in the logs such as 'val_loss', "
                            f"got {type(monitor).__name__}")
        self.monitor, self.mode = monitor, mode
        if monitor is None and mode != "auto":
            raise ValueError(f"{who}(mode={mode!r}) needs the figure it applies to: pass monitor= too, "
                             "e.g. monitor='val_loss'")
        op = direction(monitor, mode, who) if monitor is not None else "max"   # monitored(): higher is better
        self.monitor_op = np.less if op == "min" else np.greater
        self.min_delta = abs(float(min_delta))
        self.baseline = baseline
        self.best = baseline

    def get_monitor_value(self, logs: dict | None, what: str | None = None) -> float | None:
        """The monitored figure of ``logs`` (dpnn's default figure is negated for a loss); None
        when it is not in the logs, with Keras's warning, which ``what`` begins, unless that is None."""
        logs = logs or {}
        if self.monitor is None:
            return monitored(logs)[1]
        value = logs.get(self.monitor, logs.get(KERAS_NAMES.get(self.monitor, self.monitor)))
        if value is None:
            if what is not None:
                warnings.warn(f"{what} on metric `{self.monitor}` which is not available. "
                              f"Available metrics are: {','.join(logs)}", UserWarning, stacklevel=3)
            return None
        return float(value)

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None or not math.isfinite(reference):
            return True
        delta = -self.min_delta if self.monitor_op is np.less else self.min_delta
        return bool(self.monitor_op(value - delta, reference))
